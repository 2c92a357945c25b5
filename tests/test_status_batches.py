"""Status batches on the session, on a real gRPC server and a real etcd: the controller
says it takes them, takes each report of a batch on its own (a task of another node, or
a report over the bounds, is refused without losing the others), refuses a batch over
its bounds whole, and still takes an older agent's single reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import structlog

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common import session_limits
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.session_limits import MAX_STATUS_TEXT
from dockyard.controller.dispatcher import Dispatcher
from dockyard.controller.store import TASKS, Store
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    TaskStatusBatch,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import NodeDescription, TaskStatus
from dockyard.v1.workloads_pb2 import Task
from tests.served_dispatcher import Served, node_session, served_dispatcher

MINE = "m" * 20
OTHER = "o" * 20
TASK_IDS = {"mine1": MINE, "mine2": MINE, "mine3": MINE, "theirs": OTHER}


@pytest.fixture
async def served(etcd: EtcdServer) -> AsyncIterator[Served]:
    """The dispatcher and its status writer over a real etcd, with three tasks on
    node MINE and one on node OTHER, all ASSIGNED."""
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    for task_id, node_id in TASK_IDS.items():
        task = Task(
            id=task_id,
            node_id=node_id,
            desired_state=TaskStatus.RUNNING,
            status=TaskStatus(state=TaskStatus.ASSIGNED),
        )
        await store.create(TASKS, task_id, task)
    async with served_dispatcher(store) as served:
        yield served
    await store.close()


def report(task_id: str, state: int = TaskStatus.RUNNING, error: str = "") -> TaskStatusReport:
    return TaskStatusReport(task_id=task_id, status=TaskStatus(state=state, error=error))


async def states(store: Store) -> dict[str, str]:
    return {
        task_id: TaskStatus.State.Name((await store.get(TASKS, task_id)).status.state)
        for task_id in TASK_IDS
    }


async def until_stored(store: Store, done: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    for _ in range(100):
        now = await states(store)
        if done(now):
            return now
        await asyncio.sleep(0.05)
    return await states(store)


async def test_a_batch_is_taken_report_by_report_and_singles_still_work(served: Served) -> None:
    async with node_session(served.address, MINE, "mine") as node:
        assert node.accepted.accepts_status_batches
        with structlog.testing.capture_logs() as logs:
            batch = [
                report("mine1"),
                report("theirs"),  # not this node's: refused, the others taken
                report("mine2", error="e" * (MAX_STATUS_TEXT + 1)),  # over the bounds
                report("mine3", TaskStatus.FAILED, error="exit 1"),
            ]
            node.outgoing.put_nowait(AgentMessage(task_statuses=TaskStatusBatch(reports=batch)))
            stored = await until_stored(
                served.store, lambda s: s["mine1"] == "RUNNING" and s["mine3"] == "FAILED"
            )
        assert stored == {
            "mine1": "RUNNING",
            "mine2": "ASSIGNED",
            "mine3": "FAILED",
            "theirs": "ASSIGNED",
        }
        reasons = {e["task_id"]: e["reason"] for e in logs if e["event"] == "task.status_rejected"}
        assert reasons["theirs"] == "task is not assigned to this node"
        assert reasons["mine2"].startswith("status.error:")
        # An older agent's single report: taken as before.
        node.outgoing.put_nowait(AgentMessage(task_status=report("mine2")))
        stored = await until_stored(served.store, lambda s: s["mine2"] == "RUNNING")
        assert stored["mine2"] == "RUNNING"


async def test_a_batch_over_its_bounds_is_refused_whole(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_limits, "MAX_STATUS_BATCH_REPORTS", 2)
    async with node_session(served.address, MINE, "mine") as node:
        with structlog.testing.capture_logs() as logs:
            over = [report("mine1"), report("mine2"), report("mine3")]
            node.outgoing.put_nowait(AgentMessage(task_statuses=TaskStatusBatch(reports=over)))
            within = [report("mine1", TaskStatus.STARTING)]
            node.outgoing.put_nowait(AgentMessage(task_statuses=TaskStatusBatch(reports=within)))
            stored = await until_stored(served.store, lambda s: s["mine1"] != "ASSIGNED")
        assert stored["mine1"] == "STARTING"  # the batch within its bounds only
        assert stored["mine2"] == stored["mine3"] == "ASSIGNED"
        reasons = [e["reason"] for e in logs if e["event"] == "task.status_rejected"]
        assert reasons == ["3 reports, at most 2 in one batch"]


@pytest.mark.parametrize("batches", [True, False])
async def test_an_agent_sends_batches_only_to_a_controller_that_takes_them(
    served: Served, monkeypatch: pytest.MonkeyPatch, batches: bool
) -> None:
    if not batches:  # an older controller: its acceptance does not say it takes them
        accepted = Dispatcher._accepted

        def older(self: Dispatcher, session: object) -> DispatcherMessage:
            message = accepted(self, session)  # type: ignore[arg-type]
            message.accepted.ClearField("accepts_status_batches")
            return message

        monkeypatch.setattr(Dispatcher, "_accepted", older)
    taken: list[str] = []  # what the dispatcher read
    single, batch = Dispatcher._take_status, Dispatcher._take_statuses
    monkeypatch.setattr(
        Dispatcher,
        "_take_status",
        lambda self, s, r: (taken.append("single"), single(self, s, r))[1],
    )
    monkeypatch.setattr(
        Dispatcher,
        "_take_statuses",
        lambda self, s, b: (taken.append("batch"), batch(self, s, b))[1],
    )
    session = ControllerSession([served.address], NodeIdentity(MINE, "mine"), NodeDescription)
    running = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), 10)
        assert session.status.accepts_status_batches is batches
        assert session.report_many([report("mine1"), report("mine3", TaskStatus.FAILED)])
        stored = await until_stored(
            served.store, lambda s: s["mine1"] == "RUNNING" and s["mine3"] == "FAILED"
        )
        assert (stored["mine1"], stored["mine3"]) == ("RUNNING", "FAILED")
        assert taken == (["batch"] if batches else ["single", "single"])
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
