"""A few threads of their own for the blocking steps of container starts.

A scale-up hands the agent a set of tasks at once; each task's create queues its
blocking step (directories, the overlay mount, config.json, the record) in asyncio's
default executor as soon as it arrives, and that executor takes jobs first come, first
served. A task whose create is done queues its start's first step behind every other
task's create: with 100 tasks no conmon ran before the hundredth create, and for that
time (a third of a second) the machine was half idle while the agent alone worked.
Starts take their steps here instead, so the first ``runc create`` runs while the
other tasks are still being prepared, and the start's steps are short (a few file
operations), so two threads keep up with any number of starts.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["START_LANE_THREADS", "ThreadLane"]

T = TypeVar("T")

START_LANE_THREADS = 2


class ThreadLane:
    """A named thread pool of `threads`, made at its first call, ended by `close`
    (a later call makes a new one: a runtime is recovered again after a close)."""

    def __init__(self, name: str, threads: int = START_LANE_THREADS) -> None:
        self.name = name
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """``call(*args)`` in one of the lane's threads (as ``asyncio.to_thread``: the
        caller's context variables go along)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name)
        context = contextvars.copy_context()
        job = functools.partial(context.run, call, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    def close(self) -> None:
        """End the threads once their jobs are done (without waiting for them here)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
