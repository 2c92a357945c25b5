"""`TaskScope`: one owner's per-item background tasks in one `asyncio.TaskGroup`.

A daemon part that starts a task per item (a watcher per container, a shared pull per
image) which outlives the call that asked for it keeps them in a scope: `open()` starts
the scope's holder task, which enters a TaskGroup and keeps it until `close()`; `spawn()`
starts an item in that group and returns its task, which can be cancelled on its own
(the group goes on). An item's failure is logged (`task.failed`) and, in a `fatal`
scope, ends the group (every other item is cancelled) and is raised by `wait()`, where
the daemon's own task group sees it. `close()` cancels every item and awaits them all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import structlog

__all__ = ["ScopeClosed", "TaskScope", "run_to_end", "wait_for_owned"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class ScopeClosed(RuntimeError):
    """An item was spawned in a scope that is not open (closed, or never opened)."""


class TaskScope:
    """The per-item tasks of one owner, from `open()` to `close()`.

    Args:
        name: The owner, in logs and in the holder task's name.
        fatal: Whether an item's failure (an exception, not a cancellation) ends the
            scope: yes for the owner's loops, no for one container's watcher.
    """

    def __init__(self, name: str, *, fatal: bool = False) -> None:
        self.name = name
        self.fatal = fatal
        self._group: asyncio.TaskGroup | None = None
        self._holder: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._items: set[asyncio.Task[Any]] = set()

    @property
    def is_open(self) -> bool:
        """Whether items can be spawned."""
        return self._group is not None

    def items(self) -> set[asyncio.Task[Any]]:
        """The items not yet done."""
        return set(self._items)

    async def open(self) -> None:
        """Start holding the group (nothing if open already; if opening, wait for it)."""
        if self._group is not None:
            return
        if self._holder is None or self._holder.done():
            ready = self._ready = asyncio.Event()
            self._holder = asyncio.create_task(self._hold(ready), name=f"scope-{self.name}")
            # A holder that ends before its group is ready (closed meanwhile) lets its
            # openers go too. One event for every opener: a burst of first callers (a
            # node's first containers, each watched) waits with no task of its own.
            self._holder.add_done_callback(lambda _: ready.set())
        await self._ready.wait()

    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T | None]:
        """Start `work` as an item of the scope.

        Raises:
            ScopeClosed: the scope is not open (`work` is closed, not run).
        """
        group = self._group
        if group is None:
            work.close()
            raise ScopeClosed(f"{self.name}: not open (closed, or never opened)")
        try:
            task = group.create_task(self._guarded(work, name), name=name)
        except RuntimeError as exc:  # shutting down: a fatal item failed
            work.close()
            raise ScopeClosed(f"{self.name}: {exc}") from None
        self._items.add(task)
        # One callback, not two: each held its own copy of the context for as long as
        # the item runs (a watcher per running container).
        task.add_done_callback(functools.partial(self._item_done, work))
        return task

    def _item_done(self, work: Coroutine[Any, Any, Any], task: asyncio.Task[Any]) -> None:
        self._items.discard(task)
        work.close()  # cancelled before it ran: no "never awaited" warning

    def submit(
        self, work: Coroutine[Any, Any, T], name: str
    ) -> tuple[asyncio.Task[None], asyncio.Future[T]]:
        """Start `work` as an item whose outcome someone awaits: its result or error goes
        to the future returned (cancelled when the item is), as the item ends; the item
        itself never fails (the error is the awaiter's, not logged here). Cancel the
        item through the task.

        Raises:
            ScopeClosed: the scope is not open (`work` is closed, not run).
        """
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task = self.spawn(_deliver(work, outcome), name)
        task.add_done_callback(lambda _: outcome.cancel())  # nothing if it has an outcome
        task.add_done_callback(lambda _: work.close())
        return task, outcome

    async def wait(self) -> None:
        """Return when the scope is closed; raise the item's error that ended it."""
        holder = self._holder
        assert holder is not None, "open() first"
        await wait_for_owned(holder)

    async def close(self) -> None:
        """Cancel every item and wait for them all (a fatal error was logged already)."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        self._group = None  # from now on spawn() refuses, and open() starts a new holder
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)

    async def close_if_idle(self) -> None:
        """`close()` when no item is left (an owner whose items come in bursts keeps no
        holder task between them; `open()` starts a new one)."""
        if all(task.done() for task in self._items):  # done ones leave at their callback
            await self.close()

    async def _hold(self, ready: asyncio.Event) -> None:
        group = asyncio.TaskGroup()
        try:
            async with group:
                self._group = group
                ready.set()
                await asyncio.Future()  # until close() cancels it
        finally:
            if self._group is group:  # not a group opened again meanwhile
                self._group = None

    async def _guarded(self, work: Coroutine[Any, Any, T], name: str) -> T | None:
        try:
            return await work
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.error("task.failed", scope=self.name, task=name, error=error, exc_info=exc)
            if self.fatal:
                raise
            return None


async def wait_for_owned(task: asyncio.Task[Any]) -> None:
    """Return when `task` ends or its owner cancels it; raise the error it ended with.
    The waiter does not own it: cancelling the waiter leaves `task` running."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and current is not None and not current.cancelling():
            return  # its owner closed it
        raise


async def run_to_end(work: Awaitable[T]) -> T:
    """Await `work` to its end even when the caller is cancelled (then re-raise that).

    Unlike ``asyncio.shield``, whose inner task goes on unowned once the caller has left,
    this caller stays until `work` is over, however often it is cancelled: an owner that
    cancels and awaits its tasks (`TaskScope.close`) knows that `work` is done too.
    """
    job = asyncio.ensure_future(work)
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait([job])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not job.cancelled():
            job.exception()  # retrieved (the work logs its own failures): no GC warning
        raise asyncio.CancelledError
    return job.result()


async def _deliver(work: Coroutine[Any, Any, T], outcome: asyncio.Future[T]) -> None:
    try:
        result = await work
    except asyncio.CancelledError:
        outcome.cancel()
        raise
    except Exception as exc:
        if not outcome.done():
            outcome.set_exception(exc)
    else:
        if not outcome.done():
            outcome.set_result(result)
