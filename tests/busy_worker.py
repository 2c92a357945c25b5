"""A loop whose thread pool is busy: the running loop's default executor cut to one
worker, which :meth:`BusyWorker.hold` keeps busy, so an ``asyncio.to_thread`` job queued
meanwhile waits for a worker, as it does on a loaded agent (deterministically)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

__all__ = ["BusyWorker", "settle"]


class BusyWorker:
    """Install with :meth:`install` in a running loop; shut down with :meth:`close`."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="busy-worker")

    def install(self) -> None:
        asyncio.get_running_loop().set_default_executor(self.executor)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """The only worker is busy inside the block; free again (and idle) after it."""
        loop = asyncio.get_running_loop()
        started, release = asyncio.Event(), threading.Event()

        def block() -> None:
            loop.call_soon_threadsafe(started.set)
            release.wait(30)

        blocker = loop.run_in_executor(self.executor, block)
        await started.wait()
        try:
            yield
        finally:
            release.set()
            await blocker

    def close(self) -> None:
        self.executor.shutdown(wait=True)


async def settle(rounds: int = 5) -> None:
    """A few loop iterations: tasks just woken reach their next await."""
    for _ in range(rounds):
        await asyncio.sleep(0)
