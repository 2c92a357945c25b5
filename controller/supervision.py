"""Supervision of the leader loops: a crashed loop restarts, a failing one ends the term.

Each loop of a term runs under `Supervisor.supervise`: when it raises (a watch
that did not catch up in time, a bug, etcd errors it does not handle itself) it
is logged as `leader_loop.crashed` and started again after a backoff; after
`max_crashes` crashes of the term's loops within `window` seconds the supervisor
raises `LoopsFailing`, which ends the term (the controller gives up leadership
and campaigns again, with a fresh view). LeadershipLost is never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from dockyard.controller.store import LeadershipLost

log = structlog.get_logger(__name__)

__all__ = ["LoopsFailing", "Supervisor"]


class LoopsFailing(Exception):
    """The term's loops crashed too often: give up leadership."""


@dataclass
class Supervisor:
    """Restarts one term's loops.

    Args:
        max_crashes: crashes (of all the term's loops together) within `window`
            seconds that end the term.
        window: seconds, measured on the monotonic clock.
        backoff: the first restart delay, doubled on each crash of that loop up to
            `max_backoff`, back to `backoff` once the loop ran for `window`.
    """

    max_crashes: int = 5
    window: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 10.0
    crashes: deque[float] = field(default_factory=deque)

    async def supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` until cancelled, restarting it when it raises or returns."""
        delay = self.backoff
        while True:
            started = time.monotonic()
            try:
                await run()
                error = "returned (a leader loop runs until cancelled)"
                log.error("leader_loop.crashed", loop=name, error=error)
            except LeadershipLost:
                raise
            except Exception as exc:  # every failure of a loop is a crash
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.error("leader_loop.crashed", loop=name, error=error, exc_info=exc)
            now = time.monotonic()
            if now - started >= self.window:
                delay = self.backoff
            self._count(now, name, error)
            log.info("leader_loop.restarting", loop=name, delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def _count(self, now: float, name: str, error: str) -> None:
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.window:
            self.crashes.popleft()
        if len(self.crashes) >= self.max_crashes:
            log.error(
                "leader_loop.gave_up",
                loop=name,
                crashes=len(self.crashes),
                window=self.window,
                error=error,
            )
            raise LoopsFailing(
                f"leader loops crashed {len(self.crashes)} times in {self.window:g} s "
                f"(last: {name}: {error}): giving up leadership"
            )
