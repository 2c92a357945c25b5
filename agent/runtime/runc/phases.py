"""Per-phase timing of one container operation, logged at debug as ``container.phases``.

A start's time is spread over a dozen awaits (mount, bundle, conmon, runc); the log line
says which one took it, and ``tests/bench/bench_agent.py --phases`` sums them up.
"""

from __future__ import annotations

import time

import structlog

__all__ = ["Phases"]

log = structlog.get_logger(__name__)


class Phases:
    """Milliseconds between successive :meth:`mark` calls, named by the mark."""

    def __init__(self, op: str, container_id: str) -> None:
        """Start the clock for operation ``op`` (``create``, ``start``...)."""
        self.op = op
        self.container_id = container_id
        self.ms: dict[str, float] = {}
        self._begin = self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Record the time since the previous mark as ``phase``."""
        now = time.perf_counter()
        self.ms[phase] = round((now - self._last) * 1000, 2)
        self._last = now

    def done(self) -> None:
        """Log every phase and the total (at debug: free when debug is off)."""
        total = round((time.perf_counter() - self._begin) * 1000, 2)
        log.debug(
            "container.phases", op=self.op, container_id=self.container_id, total=total, **self.ms
        )
