"""The dispatcher against misbehaving nodes, on a real gRPC server and a real etcd:
a node that never reads costs at most one waiting message of each kind, a message
larger than a node can take is never sent, oversized status reports are refused
naming the field, and an agent refuses a set over its bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import structlog

from dockyard.agent import session as agent_session
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.session_limits import (
    MAX_ASSIGNED_TASKS,
    MAX_STATUS_TEXT,
    assignment_set_problem,
    clip_status,
    status_report_problem,
)
from dockyard.controller import sessions as sessions_module
from dockyard.controller.outbox import Outbox
from dockyard.controller.store import TASKS, Store
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    AssignmentSet,
    DispatcherMessage,
    Heartbeat,
    HeartbeatAck,
    NetworkMap,
    SessionHello,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task
from tests.served_dispatcher import Served, node_session, served_dispatcher

MiB = 1024 * 1024
MUTE = "a" * 20


@pytest.fixture
async def served(etcd: EtcdServer) -> AsyncIterator[Served]:
    """The dispatcher on a gRPC server with the controller's options, its status writer
    on a cluster state fed by a real etcd."""
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    task = Task(
        id="t" * 24,
        node_id=MUTE,
        desired_state=TaskStatus.RUNNING,
        status=TaskStatus(state=TaskStatus.ASSIGNED),
    )
    await store.create(TASKS, task.id, task)
    async with served_dispatcher(store) as served:
        yield served
    await store.close()


def big_set(index: int, size: int) -> DispatcherMessage:
    task = Task(id=f"t{index}")
    task.spec.container.env.append("PAD=" + "x" * size)
    return DispatcherMessage(assignments=AssignmentSet(full=True, tasks=[task]))


def waiting(outbox: Any) -> int:
    """Messages waiting in a session's outbox (whatever its type)."""
    return outbox.qsize() if hasattr(outbox, "qsize") else len(outbox)


async def test_a_node_that_never_reads_costs_one_message_of_each_kind(served: Served) -> None:
    async with node_session(
        served.address, MUTE, "mute", [("grpc.max_receive_message_length", 64 * MiB)]
    ) as node:
        node_id = node.accepted.node_id
        session = served.sessions.get(node_id)
        assert session is not None
        # From now on the node reads nothing, and sends a heartbeat flood.
        for sequence in range(1, 5001):
            node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=sequence)))
        for index in range(60):  # 60 whole sets of 1 MiB each
            assert served.sessions.post(node_id, big_set(index, MiB))
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # the flood has been read
        assert served.sessions.heartbeats_received > 1000
        assert waiting(session.outbox) <= 2  # one set and one ack at most
        # When it reads again, the newest set arrives, and not sixty.
        sets = []
        while not sets or sets[-1] != "t59":
            message = await asyncio.wait_for(node.call.read(), 10)
            assert isinstance(message, DispatcherMessage)
            if message.HasField("assignments"):
                sets.append(message.assignments.tasks[0].id)
        assert len(sets) < 60


async def test_a_message_larger_than_a_node_takes_is_not_sent(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "MAX_SESSION_MESSAGE_BYTES", MiB)
    async with node_session(served.address, "b" * 20, "small") as node:
        node_id = node.accepted.node_id
        with structlog.testing.capture_logs() as logs:
            assert not served.sessions.post(node_id, big_set(0, 2 * MiB))
        session = served.sessions.get(node_id)
        assert session is not None and waiting(session.outbox) == 0
        assert next(e for e in logs if e["event"] == "session.message_too_large")["limit"] == MiB
        assert served.sessions.post(node_id, big_set(1, MiB // 2))
        message = await asyncio.wait_for(node.call.read(), 10)
        assert isinstance(message, DispatcherMessage)
        assert message.assignments.tasks[0].id == "t1"


async def test_oversized_reports_and_messages_from_a_node_write_nothing(served: Served) -> None:
    task_id = "t" * 24

    def report(**status: Any) -> AgentMessage:
        return AgentMessage(
            task_status=TaskStatusReport(
                task_id=task_id, status=TaskStatus(state=TaskStatus.RUNNING, **status)
            )
        )

    async with node_session(served.address, MUTE, "mute") as node:
        with structlog.testing.capture_logs() as logs:
            node.outgoing.put_nowait(report(error="e" * (MAX_STATUS_TEXT + 1)))
            node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=1)))
            assert isinstance(
                await asyncio.wait_for(node.call.read(), 10), DispatcherMessage
            )  # ack
            await asyncio.sleep(0.5)  # the writer's batch interval, and more
        stored = await served.store.get(TASKS, task_id)
        assert stored.status.state == TaskStatus.ASSIGNED  # nothing written
        rejected = [e for e in logs if e["event"] == "task.status_rejected"]
        assert rejected[0]["reason"] == (
            f"status.error: {MAX_STATUS_TEXT + 1} characters, at most {MAX_STATUS_TEXT}"
        )
        node.outgoing.put_nowait(report(error="e" * MAX_STATUS_TEXT))  # at the bound: taken
        for _ in range(50):
            await asyncio.sleep(0.1)
            stored = await served.store.get(TASKS, task_id)
            if stored.status.state == TaskStatus.RUNNING:
                break
        assert stored.status.state == TaskStatus.RUNNING
        # A message over the controller's 4 MiB receive limit ends the stream.
        node.outgoing.put_nowait(report(message="m" * (5 * MiB)))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await asyncio.wait_for(node.call.read(), 10)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(50):
        if MUTE not in served.sessions:
            break
        await asyncio.sleep(0.1)
    assert MUTE not in served.sessions
    assert (await served.store.get(TASKS, task_id)).status.message == ""


def test_the_outbox_keeps_the_newest_of_each_kind_in_first_queued_order() -> None:
    async def scenario() -> list[DispatcherMessage | None]:
        outbox = Outbox()
        for index in range(1000):
            outbox.put(DispatcherMessage(network=NetworkMap(subnet=f"10.{index % 256}.0.0/24")))
            outbox.put(big_set(index, 10))
            outbox.put(DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=index)))
        assert len(outbox) == 3
        assert outbox.superseded == 2997
        got = [await outbox.get() for _ in range(3)]
        outbox.put(big_set(5000, 10))
        outbox.close()
        outbox.put(big_set(5001, 10))
        got.append(await outbox.get())  # closed: nothing more, not even what waited
        return got

    network, assignments, ack, end = asyncio.run(scenario())
    assert network is not None and network.network.subnet == "10.231.0.0/24"
    assert assignments is not None and assignments.assignments.tasks[0].id == "t999"
    assert ack is not None and ack.heartbeat_ack.sequence == 999
    assert end is None


def test_status_reports_are_bounded_and_name_the_field() -> None:
    report = TaskStatusReport(task_id="t1", status=TaskStatus(error="e" * (MAX_STATUS_TEXT + 1)))
    assert status_report_problem(report) == (
        f"status.error: {MAX_STATUS_TEXT + 1} characters, at most {MAX_STATUS_TEXT}"
    )
    assert status_report_problem(TaskStatusReport(task_id="t" * 129)) == (
        "task_id: 129 characters, at most 128"
    )
    assert (
        status_report_problem(TaskStatusReport(task_id="t1", status=TaskStatus(address="a" * 65)))
        == "status.address: 65 characters, at most 64"
    )
    # What an agent reports it clips first, so its reports always pass.
    status = TaskStatus(message="m" * 100_000, error="short")
    clip_status(status)
    assert len(status.message) <= MAX_STATUS_TEXT and status.error == "short"
    assert status.message.endswith(f"... ({100_000 - MAX_STATUS_TEXT + 48} characters cut)")
    assert status_report_problem(TaskStatusReport(task_id="t1", status=status)) is None


def test_an_agent_refuses_a_set_over_its_bounds_whole() -> None:
    tasks = [Task(id=f"t{i}") for i in range(MAX_ASSIGNED_TASKS + 1)]
    over = AssignmentSet(full=True, tasks=tasks)
    assert assignment_set_problem(over) == (
        f"{MAX_ASSIGNED_TASKS + 1} tasks, at most {MAX_ASSIGNED_TASKS} in one set"
    )
    with structlog.testing.capture_logs() as logs:
        assert not agent_session._acceptable(over)
    assert logs[0]["event"] == "session.assignments_refused"
    assert agent_session._acceptable(AssignmentSet(full=True, tasks=tasks[:10]))


async def test_a_node_that_stops_reading_never_delays_another_nodes_sets(served: Served) -> None:
    """Each node has its own outbox: 1 MiB sets pile up (one at a time) for a node that
    reads nothing, while another node gets every set posted to it, in order."""
    streams: dict[str, asyncio.Queue[AgentMessage]] = {}

    def requests(node_id: str) -> AsyncIterator[AgentMessage]:
        outgoing = streams[node_id] = asyncio.Queue()
        outgoing.put_nowait(AgentMessage(hello=SessionHello(node_id=node_id, name=node_id)))

        async def stream() -> AsyncIterator[AgentMessage]:
            while True:
                yield await outgoing.get()

        return stream()

    options = [("grpc.max_receive_message_length", 64 * MiB)]
    async with (
        grpc.aio.insecure_channel(served.address, options=options) as slow_channel,
        grpc.aio.insecure_channel(served.address, options=options) as fast_channel,
    ):
        slow = dispatcher_pb2_grpc.DispatcherStub(slow_channel).Session(requests("s" * 20))
        fast = dispatcher_pb2_grpc.DispatcherStub(fast_channel).Session(requests("f" * 20))
        for call in (slow, fast):
            assert isinstance(await asyncio.wait_for(call.read(), 10), DispatcherMessage)
        slow_session = served.sessions.get("s" * 20)
        assert slow_session is not None
        for index in range(40):
            assert served.sessions.post("s" * 20, big_set(index, MiB))
            assert served.sessions.post("f" * 20, big_set(index, 1000))
            message = await asyncio.wait_for(fast.read(), 10)
            assert isinstance(message, DispatcherMessage)
            assert message.assignments.tasks[0].id == f"t{index}"
        assert waiting(slow_session.outbox) <= 1
        # The slow node reads again: what it gets ends with the newest set, not forty.
        got = []
        while not got or got[-1] != "t39":
            message = await asyncio.wait_for(slow.read(), 10)
            assert isinstance(message, DispatcherMessage)
            got.append(message.assignments.tasks[0].id)
        assert len(got) < 40
        slow.cancel()
        fast.cancel()
