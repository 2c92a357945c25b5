"""``to_thread_to_end``: a blocking call a cancelled caller does not drop or cut short
(``asyncio.to_thread`` drops a job still queued for a worker when cancelled)."""

from __future__ import annotations

import asyncio
import os

import pytest

from dockyard.common.threads import to_thread_to_end
from tests.busy_worker import BusyWorker, settle


async def test_a_queued_call_still_runs_for_a_cancelled_caller(busy: BusyWorker) -> None:
    ran: list[str] = []
    async with busy.hold():
        caller = asyncio.create_task(to_thread_to_end(lambda: ran.append("umount")))
        await settle()
        caller.cancel()
        await settle()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert ran == ["umount"]  # done by the time the cancellation reached the caller


async def test_the_result_of_a_cancelled_callers_call_is_undone(busy: BusyWorker) -> None:
    read, write = os.pipe()
    os.close(write)
    undone: list[int] = []

    def close(fd: int) -> None:
        undone.append(fd)
        os.close(fd)

    async with busy.hold():
        caller = asyncio.create_task(to_thread_to_end(lambda: os.dup(read), close))
        await settle()
        caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    os.close(read)
    assert len(undone) == 1
    with pytest.raises(OSError):
        os.fstat(undone[0])  # closed, not leaked


async def test_an_uncancelled_call_returns_its_result_and_is_not_undone() -> None:
    undone: list[int] = []
    assert await to_thread_to_end(lambda: 41 + 1, undone.append) == 42
    assert undone == []


async def test_a_failed_call_raises_its_error() -> None:
    def fail() -> None:
        raise OSError("EBUSY")

    with pytest.raises(OSError, match="EBUSY"):
        await to_thread_to_end(fail)
