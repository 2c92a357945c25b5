"""A debounce that lets the first change after a quiet time through at once.

The control loops let a burst of changes gather before they look (a scale-up is written
in many transactions; one round over all of them is cheaper than one per transaction).
A plain debounce also holds back the first change after a quiet time, which is the
whole latency of a single `service create` (each loop's wait adds to the next's). Here
a change that ends a wait of at least `period` is taken at once; one that came while
the loop was busy (the wait returns at once) is one of a burst and gathers for `period`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

__all__ = ["after_quiet", "ended_quiet"]


async def ended_quiet(wait: Awaitable[object], period: float) -> bool:
    """Await `wait` (the next change); whether the wait lasted at least `period` (the
    change ended a quiet time), for a loop that decides itself how long to gather."""
    started = time.monotonic()
    await wait
    return time.monotonic() - started >= period


async def after_quiet(wait: Awaitable[object], period: float) -> None:
    """Await `wait` (the next change); then let changes gather for `period` unless the
    wait itself lasted that long (the change ended a quiet time: go at once)."""
    if not await ended_quiet(wait, period):
        await asyncio.sleep(period)
