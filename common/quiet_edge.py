"""A debounce that lets the first change after a quiet time through at once.

The control loops let a burst of changes gather before they look (a scale-up is written
in many transactions; one round over all of them is cheaper than one per transaction).
A plain debounce also holds back the first change after a quiet time, which is the
whole latency of a single `service create` (each loop's wait adds to the next's). Here
a change that comes at least `period` after the loop's last round with work is taken at
once; one that comes sooner (one of a burst: it came while the loop was busy, or right
after) gathers for `period`.

A round that found nothing to do does not count: every loop wakes on every change of
the view, and one loop's change comes before the next's input (the service's record
before its task, the task before its placement): had those rounds counted, each loop's
input would come right after a look and wait the whole period. But at most
`AT_ONCE` wakes in a period go at once: a stream of changes that are no loop's work
(heartbeats, status reports) would otherwise wake it once per change (the orchestrator
spun hundreds of empty rounds a second in a full-size burst); after those, it waits the
period as a plain debounce does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

__all__ = ["AT_ONCE", "QuietEdge"]

AT_ONCE = 3
"""Wakes in one period that may go at once (a single create's chain: the service's
record, its task, the task's placement)."""


class QuietEdge:
    """One loop's debounce. Args: period: seconds a burst's changes gather."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._worked = float("-inf")  # when the last round with work ended
        self._window = float("-inf")  # when the period of the first wake at once began
        self._at_once = 0  # wakes at once since then

    def worked(self) -> None:
        """A round had work (it planned, placed or sent something): changes that come
        within `period` of now are one burst's and gather."""
        self._worked = time.monotonic()

    def quiet(self) -> bool:
        """Whether a change now ends a quiet time (no round had work for `period`, and
        fewer than AT_ONCE wakes went at once in this period); if so, it is counted."""
        now = time.monotonic()
        if now - self._worked < self.period:
            return False
        if now - self._window >= self.period:
            self._window, self._at_once = now, 0
        if self._at_once >= AT_ONCE:
            return False
        self._at_once += 1
        return True

    async def wait(self, change: Awaitable[object]) -> bool:
        """Await `change`; then let changes gather for `period` unless it ended a quiet
        time. Returns whether it did (the loop went at once)."""
        await change
        if self.quiet():
            return True
        await asyncio.sleep(self.period)
        return False
