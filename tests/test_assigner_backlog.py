"""The assigner gathers changes for longer while the scheduler has a backlog
(controller/assignments.py, BACKLOG_TASKS and BACKLOG_GATHER): a scale-up's batches,
each touching every node, then reach a node in one delta instead of one per batch; with
no backlog, or once it is placed, a change goes out after DEBOUNCE as before."""

from __future__ import annotations

import asyncio

import pytest

from dockyard.common import quiet_edge
from dockyard.common.states import TaskState
from dockyard.controller import assignments
from dockyard.controller.assignments import Assigner
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS
from dockyard.v1.dispatcher_pb2 import DispatcherMessage
from dockyard.v1.workloads_pb2 import Task
from tests.quiet_clock import LaterClock
from tests.test_incremental_views import cluster


def put(state: ClusterState, task_id: str, node_id: str = "n1") -> None:
    """A task the scheduler placed (ASSIGNED on ``node_id``), or one still waiting
    (PENDING, no node: ``node_id`` "")."""
    record = Task(id=task_id, service_id="s1", node_id=node_id)
    record.desired_state = TaskState.RUNNING
    record.status.state = TaskState.ASSIGNED if node_id else TaskState.PENDING  # type: ignore[assignment]
    state._put(TASKS, state.tasks, task_id, record)
    for event in state._subscribers:  # what the view's watch does once it applied them
        event.set()


class Sent:
    """What the assigner posts to n1 (the node the tests place on)."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[DispatcherMessage] = asyncio.Queue()

    def post(self, node_id: str, message: DispatcherMessage) -> bool:
        if node_id == "n1":
            self.messages.put_nowait(message)
        return True

    def tasks(self) -> list[list[str]]:
        """The task IDs of each message sent so far."""
        found = []
        while not self.messages.empty():
            found.append([t.id for t in self.messages.get_nowait().assignments.tasks])
        return found


@pytest.fixture
def gather(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignments, "DEBOUNCE", 0.02)
    monkeypatch.setattr(assignments, "BACKLOG_TASKS", 3)
    monkeypatch.setattr(assignments, "BACKLOG_GATHER", 60.0)


async def started(state: ClusterState, sent: Sent) -> tuple[Assigner, asyncio.Task[None]]:
    assigner = Assigner(state, sent.post, takes_deltas=lambda node_id: True)
    await assigner.send_now("n1")  # the session's full set: deltas follow it
    running = asyncio.create_task(assigner.run())
    await asyncio.sleep(0.05)
    assert sent.tasks() == [[]]
    return assigner, running


async def stopped(running: asyncio.Task[None]) -> None:
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


@pytest.mark.usefixtures("gather")
async def test_with_a_backlog_two_batches_go_in_one_delta() -> None:
    state = cluster()
    for i in range(3):
        put(state, f"waiting{i}", node_id="")
    sent = Sent()
    _, running = await started(state, sent)
    try:
        put(state, "a")
        await asyncio.sleep(0.1)  # five debounces: without the backlog, "a" went alone
        put(state, "b")
        await asyncio.sleep(0.1)
        assert sent.tasks() == []
        for i in range(3):
            put(state, f"waiting{i}", node_id="n2")  # placed: the backlog is gone
        first = await asyncio.wait_for(sent.messages.get(), timeout=10)
        assert sorted(t.id for t in first.assignments.tasks) == ["a", "b"]
    finally:
        await stopped(running)


@pytest.mark.usefixtures("gather")
async def test_without_a_backlog_each_change_goes_after_the_debounce() -> None:
    state = cluster()
    put(state, "waiting0", node_id="")  # fewer than BACKLOG_TASKS waiting
    sent = Sent()
    _, running = await started(state, sent)
    try:
        put(state, "a")
        first = await asyncio.wait_for(sent.messages.get(), timeout=10)
        put(state, "b")
        second = await asyncio.wait_for(sent.messages.get(), timeout=10)
        assert [[t.id for t in m.assignments.tasks] for m in (first, second)] == [["a"], ["b"]]
    finally:
        await stopped(running)


@pytest.fixture
def quiet_with_a_long_debounce(monkeypatch: pytest.MonkeyPatch) -> None:
    """A debounce of 30 s, and every wait of the assigner made to look 30 s long (each
    change ends a quiet time)."""
    monkeypatch.setattr(assignments, "DEBOUNCE", 30.0)
    monkeypatch.setattr(quiet_edge, "time", LaterClock(30.0))


async def test_a_change_after_a_quiet_time_goes_without_the_debounce(
    quiet_with_a_long_debounce: None,
) -> None:
    """With a debounce of 30 s (and the assigner's wait made to look 30 s long) a
    placement after a quiet time, no backlog waiting, goes out well within it."""
    state = cluster()
    sent = Sent()
    _, running = await started(state, sent)
    try:
        put(state, "a")
        first = await asyncio.wait_for(sent.messages.get(), timeout=10)
        assert [t.id for t in first.assignments.tasks] == ["a"]
    finally:
        await stopped(running)


async def test_a_change_after_a_quiet_time_gathers_while_tasks_wait(
    quiet_with_a_long_debounce: None,
) -> None:
    """A burst's first placement (another task still waiting for the scheduler, fewer
    than BACKLOG_TASKS) gathers the debounce, even after a quiet time: the burst's next
    placements go in the same set."""
    state = cluster()
    put(state, "waiting0", node_id="")
    sent = Sent()
    _, running = await started(state, sent)
    try:
        put(state, "a")
        await asyncio.sleep(0.5)  # it went at once if anything was sent by now
        assert sent.tasks() == []
    finally:
        await stopped(running)


async def test_a_single_creates_placement_goes_at_once_after_its_pending_task(
    quiet_with_a_long_debounce: None,
) -> None:
    """A single create: its task comes PENDING (no node: nothing to send), then placed.
    After a quiet time the placement goes out as soon as nothing is pending, well within
    a debounce of 30 s."""
    state = cluster()
    sent = Sent()
    _, running = await started(state, sent)
    try:
        put(state, "a", node_id="")
        await asyncio.sleep(0.1)
        put(state, "a")
        first = await asyncio.wait_for(sent.messages.get(), timeout=10)
        assert [t.id for t in first.assignments.tasks] == ["a"]
    finally:
        await stopped(running)
