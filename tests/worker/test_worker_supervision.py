"""The worker over a fake executor: failures it must survive, and the ones it must raise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from dockyard.agent.executor import ExecutorError
from dockyard.agent.tasks.persistence import Snapshot
from dockyard.agent.worker import SAVE_GAP, Worker
from dockyard.v1.dispatcher_pb2 import AssignmentSet, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus
from tests.worker.conftest import FakeSession, full_set, make_task, until
from tests.worker.fakes import FakeExecutor


@pytest.fixture
def session() -> FakeSession:
    fake = FakeSession()
    fake.connect()
    return fake


@pytest.fixture
async def executor_and_worker(
    tmp_path: Path, session: FakeSession
) -> AsyncIterator[tuple[FakeExecutor, Worker]]:
    executor = FakeExecutor()
    worker = Worker(executor, session, tmp_path)
    await worker.start()
    try:
        yield executor, worker
    finally:
        await worker.close()


async def test_a_failed_stop_on_shutdown_is_tried_again(
    executor_and_worker: tuple[FakeExecutor, Worker], session: FakeSession
) -> None:
    """Before, the task's runner died on the error: the task stayed RUNNING for good."""
    executor, worker = executor_and_worker
    executor.stop_errors = [ExecutorError("runc kill: device busy")]
    task = make_task("t1")
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "RUNNING")
    task.desired_state = TaskStatus.SHUTDOWN
    await worker.on_assignments(full_set(task))
    await until(lambda: session.states("t1")[-1:] == ["SHUTDOWN"], "SHUTDOWN")
    assert executor.named("stop") == ["c-t1", "c-t1"]


async def test_a_delta_set_changes_only_the_tasks_it_names(
    executor_and_worker: tuple[FakeExecutor, Worker], session: FakeSession
) -> None:
    executor, worker = executor_and_worker
    await worker.on_assignments(full_set(make_task("t1"), make_task("t2")))
    await until(lambda: session.states("t2")[-1:] == ["RUNNING"], "RUNNING")
    delta = AssignmentSet(full=False, tasks=[make_task("t3")], removed_task_ids=["t1"])
    await worker.on_assignments(delta)
    await until(lambda: session.states("t3")[-1:] == ["RUNNING"], "t3 RUNNING")
    await until(lambda: "t1" not in worker.statuses(), "t1 removed")
    assert set(worker.statuses()) == {"t2", "t3"}
    assert executor.named("remove") == ["c-t1"]


class BrokenSession(FakeSession):
    def report(self, report: TaskStatusReport) -> bool:
        raise RuntimeError("a bug in the session")


async def test_a_bug_under_the_worker_is_logged_and_raised_by_wait(tmp_path: Path) -> None:
    session = BrokenSession()
    session.connect()
    worker = Worker(FakeExecutor(), session, tmp_path)
    await worker.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await worker.on_assignments(full_set(make_task("t1")))
            with pytest.raises(ExceptionGroup) as raised:
                await asyncio.wait_for(worker.wait(), 5)
        assert raised.group_contains(RuntimeError, match="a bug in the session")
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["worker.failed"]
        # a worker that broke takes no more sets, and says so
        with structlog.testing.capture_logs() as logs:
            await worker.on_assignments(full_set(make_task("t2")))
        assert [e["event"] for e in logs] == ["worker.assignments_ignored"]
    finally:
        await worker.close()


async def test_wait_returns_when_the_worker_is_closed(tmp_path: Path) -> None:
    worker = Worker(FakeExecutor(), FakeSession(), tmp_path)
    await worker.start()
    async with asyncio.TaskGroup() as group:
        waiting = group.create_task(worker.wait())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await worker.close()
    assert waiting.result() is None


async def test_a_change_made_while_worker_json_is_written_is_saved_too(
    tmp_path: Path, session: FakeSession
) -> None:
    """Before, a change during a write was saved only with the next change."""
    executor = FakeExecutor()
    worker = Worker(executor, session, tmp_path)
    await worker.start()
    assert worker.state is not None
    writing, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    write = worker.state.write

    def slow_write(snapshot):  # the first write of the run is held until released
        loop.call_soon_threadsafe(writing.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        write(snapshot)

    try:
        await worker.on_assignments(full_set(make_task("t1")))
        await until(lambda: session.states("t1")[-1:] == ["RUNNING"], "RUNNING")
        worker.state.write = slow_write  # type: ignore[method-assign]
        executor.exit("c-t1", 0)  # COMPLETE, saved by a write we hold
        await asyncio.wait_for(writing.wait(), 5)
        worker.state.write = write  # type: ignore[method-assign]
        task = make_task("t1")
        task.desired_state = TaskStatus.SHUTDOWN  # a change while that write is held
        await worker.on_assignments(full_set(task))
        release.set()
        await until(lambda: _saved_desired(worker) == TaskStatus.SHUTDOWN, "the change saved")
    finally:
        release.set()
        await worker.close()


def _saved_desired(worker: Worker) -> int:
    assert worker.state is not None
    saved = worker.state.load()
    return saved[0].task.desired_state if saved else -1


async def test_a_burst_of_changes_writes_worker_json_once_per_gap(
    executor_and_worker: tuple[FakeExecutor, Worker], session: FakeSession
) -> None:
    """Each write is the whole file, synced: a scale-up's statuses (one new task every
    50 ms for a second here) are saved at most once per SAVE_GAP, and the last is saved."""
    _, worker = executor_and_worker
    assert worker.state is not None
    writes: list[int] = []
    write = worker.state.write

    def counted(snapshot: Snapshot) -> None:
        writes.append(snapshot.sequence)
        write(snapshot)

    worker.state.write = counted  # type: ignore[method-assign]
    tasks = []
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        tasks.append(make_task(f"t{len(tasks)}"))
        await worker.on_assignments(full_set(*tasks))
        await asyncio.sleep(0.05)
    last = tasks[-1].id
    await until(lambda: session.states(last)[-1:] == ["RUNNING"], "the last task RUNNING")
    await until(
        lambda: (
            [s.status.state for s in worker.state.load() if s.task.id == last]  # type: ignore[union-attr]
            == [TaskStatus.RUNNING]
        ),
        "the last status saved",
    )
    elapsed = time.monotonic() - started
    assert len(writes) <= elapsed / SAVE_GAP + 1
