"""The deadline of the target being called, so every RPC made for it stops in time."""

from __future__ import annotations

import time
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("dockyard_target_deadline", default=None)


def set_deadline(deadline: float | None) -> None:
    """Calls made from this thread (or context) end by `deadline` (time.monotonic())."""
    _DEADLINE.set(deadline)


def remaining(timeout: float | None) -> float | None:
    """`timeout` capped by the current deadline (if any)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = max(0.001, deadline - time.monotonic())
    return left if timeout is None else min(timeout, left)
