"""What a running task holds in the agent's pipeline: the cyclic GC walks it at every
collection for as long as the task runs (a hollow node's CPU per task, and a real
agent's). Counts, not times: the pipeline as a hollow node runs it."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent.daemon import hollow_executor
from dockyard.agent.executors.task import task_request
from dockyard.agent.runtime.base import ContainerInfo
from dockyard.agent.runtime.hollow import HollowRuntime
from dockyard.agent.worker import Worker
from tests.worker.conftest import FakeSession, full_set, make_task, until

TASKS = 40
MAX_TRACKED_PER_TASK = 55
"""Objects the cyclic GC tracks, per running task (worker, task controller, executor,
container service and its supervisor, hollow runtime): 53 on CPython 3.11; 58 before the
hollow runtime's waits were futures of their own (an `Event`, its deque and two
`Event.wait` coroutines; 56 without), the task executor's wait handed over the service's
coroutine and the task controller kept one interruptible scope; 78 before the spec
held tuples (68 without), the supervisor's watchers dropped their own entry (64 without)
and a scope's item had one done callback (61 without)."""


@pytest.fixture
def gc_paused() -> Iterator[None]:
    """No collection in the middle of a count (each test collects itself)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


async def test_a_running_task_holds_few_objects_the_gc_walks(
    tmp_path: Path, gc_paused: None
) -> None:
    session = FakeSession()
    session.connect()
    worker = Worker(hollow_executor(HollowRuntime(start_delay=0)), session, tmp_path, persist=False)
    await worker.start()
    try:
        # one task first: what the first container makes once (the supervisor's scope)
        await worker.on_assignments(full_set(make_task("t0", ["serve"])))
        await until(lambda: session.states("t0")[-1:] == ["RUNNING"], "t0 RUNNING")
        before = _tracked()
        tasks = [make_task(f"t{i}", ["serve"], slot=i) for i in range(TASKS + 1)]
        await worker.on_assignments(full_set(*tasks))
        await until(
            lambda: all(session.states(t.id)[-1:] == ["RUNNING"] for t in tasks),
            f"{TASKS} more tasks RUNNING",
        )
        session.reports.clear()  # the reports are the test's, not the pipeline's
        per_task = (_tracked() - before) / TASKS
        assert per_task <= MAX_TRACKED_PER_TASK, f"{per_task:.1f} tracked objects a task"
    finally:
        await worker.close()


def test_a_tasks_spec_holds_no_list() -> None:
    """Its sequences are tuples: an empty one is shared, a filled one of strings leaves
    the GC's sight after one pass."""
    task = make_task("t1", ["sleep", "1"])
    task.spec.container.env.append("A=1")
    task.spec.container.cap_add.append("NET_ADMIN")
    spec = task_request(task).spec
    lists = [name for name in spec.__slots__ if isinstance(getattr(spec, name), list)]
    assert lists == []
    assert spec.command == ("sleep", "1") and spec.env == ("A=1",)


MAX_WAIT_CHAIN = 6
"""Coroutines between a running task's asyncio task and the future it waits on: the
controller's `run`, `step`, `_watch`, `_wait_exit`, the service's `wait`, the runtime's
`wait` (8 before: the task executor's own `wait` and `Event.wait` sat in the chain)."""


def _chain(task: asyncio.Task[object]) -> list[str]:
    names, awaited = [], task.get_coro()
    while inspect.iscoroutine(awaited):
        names.append(awaited.cr_code.co_qualname)
        awaited = awaited.cr_await
    return names


async def test_a_running_task_waits_through_a_short_chain(tmp_path: Path) -> None:
    """Each coroutine in the chain is held (and walked by the GC) while the task runs,
    and each wake-up passes through all of them."""
    session = FakeSession()
    session.connect()
    worker = Worker(hollow_executor(HollowRuntime(start_delay=0)), session, tmp_path, persist=False)
    await worker.start()
    try:
        await worker.on_assignments(full_set(make_task("t1", ["serve"])))
        await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
        await asyncio.sleep(0.01)  # the controller has reached its wait
        runs = [t for t in asyncio.all_tasks() if _chain(t)[:1] == ["TaskController.run"]]
        assert len(runs) == 1
        chain = _chain(runs[0])
        assert len(chain) <= MAX_WAIT_CHAIN, chain
        assert chain[-1] == "HollowRuntime.wait"
    finally:
        await worker.close()


MAX_INSPECTS = 6
"""The runtime's inspects from a task's assignment to its wait: the name checks of
prepare and create, the start's look-up by name, the service's start (its resolve and
its view after), the wait's resolve (7 before: the address was a look-up of its own)."""


async def test_a_task_inspects_its_container_few_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = HollowRuntime(start_delay=0)
    inspects: list[str] = []
    inspect_once = runtime.inspect

    async def counted(ref: str) -> ContainerInfo:
        inspects.append(ref)
        return await inspect_once(ref)

    monkeypatch.setattr(runtime, "inspect", counted)
    session = FakeSession()
    session.connect()
    worker = Worker(hollow_executor(runtime), session, tmp_path, persist=False)
    await worker.start()
    try:
        await worker.on_assignments(full_set(make_task("t1", ["serve"])))
        await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "t1 RUNNING")
        await asyncio.sleep(0.01)  # the controller has reached its wait
        assert len(inspects) <= MAX_INSPECTS, inspects
    finally:
        await worker.close()
