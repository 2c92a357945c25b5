"""`TaskScope`: per-item tasks in one TaskGroup, cancelled one by one or all at close;
a failing item logged (and, in a fatal scope, the end of the scope)."""

from __future__ import annotations

import asyncio

import pytest
import structlog.testing

from dockyard.common.taskscope import ScopeClosed, TaskScope


async def _forever(started: list[str], name: str) -> None:
    started.append(name)
    await asyncio.Future()


async def _fail() -> None:
    raise ValueError("boom")


async def test_an_item_is_cancelled_on_its_own_and_the_scope_goes_on() -> None:
    scope = TaskScope("t")
    await scope.open()
    started: list[str] = []
    one = scope.spawn(_forever(started, "one"), "one")
    two = scope.spawn(_forever(started, "two"), "two")
    await asyncio.sleep(0)
    one.cancel()
    await asyncio.gather(one, return_exceptions=True)
    assert one.cancelled() and not two.done()
    three = scope.spawn(_forever(started, "three"), "three")
    await asyncio.sleep(0)
    assert started == ["one", "two", "three"]
    await scope.close()
    assert two.cancelled() and three.cancelled()
    assert scope.items() == set()


async def test_a_failing_item_is_logged_and_the_others_go_on() -> None:
    scope = TaskScope("watchers")
    await scope.open()
    started: list[str] = []
    other = scope.spawn(_forever(started, "other"), "other")
    with structlog.testing.capture_logs() as logs:
        failing = scope.spawn(_fail(), "failing")
        await asyncio.wait([failing])
    assert [(e["event"], e["scope"], e["task"]) for e in logs] == [
        ("task.failed", "watchers", "failing")
    ]
    assert logs[0]["error"] == "ValueError: boom"
    assert not other.done() and scope.is_open
    await scope.close()


async def test_a_failing_item_of_a_fatal_scope_ends_it_and_wait_raises() -> None:
    scope = TaskScope("loops", fatal=True)
    await scope.open()
    started: list[str] = []
    other = scope.spawn(_forever(started, "other"), "other")
    with structlog.testing.capture_logs():
        scope.spawn(_fail(), "failing")
        with pytest.raises(ExceptionGroup) as raised:
            await scope.wait()
    assert isinstance(raised.value.exceptions[0], ValueError)
    assert other.cancelled() and not scope.is_open
    with pytest.raises(ScopeClosed):
        scope.spawn(_forever(started, "late"), "late")
    await scope.close()


async def test_wait_returns_when_closed() -> None:
    scope = TaskScope("t", fatal=True)
    await scope.open()
    waiter = asyncio.create_task(scope.wait())
    await asyncio.sleep(0)
    await scope.close()
    await waiter  # returns, no error


async def test_submit_hands_the_outcome_to_its_awaiter_without_ending_the_scope() -> None:
    scope = TaskScope("pulls")
    await scope.open()

    async def answer() -> int:
        return 42

    _, good = scope.submit(answer(), "good")
    assert await good == 42
    with structlog.testing.capture_logs() as logs:
        _, bad = scope.submit(_fail(), "bad")
        with pytest.raises(ValueError, match="boom"):
            await bad
    assert logs == []  # the error is the awaiter's
    started: list[str] = []
    task, waiting = scope.submit(_forever(started, "long"), "long")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task])
    assert waiting.cancelled() and scope.is_open
    await scope.close()


async def test_an_item_cancelled_before_it_ran_leaves_no_pending_outcome() -> None:
    scope = TaskScope("t")
    await scope.open()
    started: list[str] = []
    task, outcome = scope.submit(_forever(started, "never"), "never")
    task.cancel()  # before its first step: the coroutine never runs
    await asyncio.wait([task])
    assert outcome.cancelled() and started == []
    await scope.close()


async def test_close_leaves_no_task_pending() -> None:
    before = asyncio.all_tasks()
    scope = TaskScope("t")
    await scope.open()
    started: list[str] = []
    for i in range(3):
        scope.spawn(_forever(started, str(i)), str(i))
    await asyncio.sleep(0)
    await scope.close()
    assert asyncio.all_tasks() == before
    with pytest.raises(ScopeClosed):
        scope.spawn(_forever(started, "late"), "late")


async def test_callers_opening_at_once_can_all_spawn() -> None:
    scope = TaskScope("t")
    started: list[str] = []

    async def open_and_spawn(name: str) -> asyncio.Task[None]:
        await scope.open()  # the second caller: while the first one's holder starts
        return scope.spawn(_forever(started, name), name)

    await asyncio.gather(open_and_spawn("one"), open_and_spawn("two"))
    await asyncio.sleep(0)
    assert started == ["one", "two"]
    await scope.close()


async def test_callers_opening_at_once_wait_without_a_task_each() -> None:
    scope = TaskScope("t")
    before = asyncio.all_tasks()
    callers = [asyncio.create_task(scope.open()) for _ in range(20)]
    await asyncio.sleep(0)  # every caller waits; the holder has not run yet
    assert len(asyncio.all_tasks() - before) == len(callers) + 1  # + the holder
    await asyncio.gather(*callers)
    assert scope.is_open
    await scope.close()


async def test_callers_opening_go_when_the_scope_closes_first() -> None:
    scope = TaskScope("t")
    opening = asyncio.create_task(scope.open())
    await asyncio.sleep(0)  # waiting for the holder
    await scope.close()
    await asyncio.wait_for(opening, 5)
    assert not scope.is_open
    with pytest.raises(ScopeClosed):
        scope.spawn(_forever([], "late"), "late")
