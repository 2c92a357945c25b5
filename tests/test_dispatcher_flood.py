"""A node that floods the dispatcher with status reports, on a real gRPC server and a
real etcd: the status writer keeps one waiting report per task (the newest, as
swarmkit's dispatcher keeps its taskUpdates map), another node's heartbeats are still
acknowledged while the flood is read, the status finally written is the newest, and
reports the controller refuses do not write one log line each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import structlog

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.store import TASKS, Store
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    Heartbeat,
    SessionHello,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task
from tests.served_dispatcher import Served, served_dispatcher

FLOOD, CALM = "f" * 20, "c" * 20
FLOOD_TASK, CALM_TASK = "a" * 24, "b" * 24
REPORTS = 50_000
FOREIGN = 5_000  # reports on the other node's task: each one refused


@pytest.fixture
async def served(etcd: EtcdServer) -> AsyncIterator[Served]:
    store = Store([etcd.endpoint], "/flood")
    await store.connect(5)
    for task_id, node_id in ((FLOOD_TASK, FLOOD), (CALM_TASK, CALM)):
        await store.create(
            TASKS,
            task_id,
            Task(
                id=task_id,
                node_id=node_id,
                desired_state=TaskStatus.RUNNING,
                status=TaskStatus(state=TaskStatus.ASSIGNED),
            ),
        )
    async with served_dispatcher(store) as served:
        yield served
    await store.close()


def flood() -> list[AgentMessage]:
    """The hello, then 50,000 reports on the node's own task (each newer than the last)
    with 5,000 on the other node's task among them."""
    messages = [AgentMessage(hello=SessionHello(node_id=FLOOD, name="flood"))]
    for index in range(REPORTS):
        messages.append(
            AgentMessage(
                task_status=TaskStatusReport(
                    task_id=FLOOD_TASK,
                    status=TaskStatus(state=TaskStatus.RUNNING, message=f"report {index}"),
                )
            )
        )
        if index % (REPORTS // FOREIGN) == 0:
            messages.append(
                AgentMessage(
                    task_status=TaskStatusReport(
                        task_id=CALM_TASK, status=TaskStatus(state=TaskStatus.FAILED)
                    )
                )
            )
    return messages


async def test_a_flooding_node_costs_one_waiting_report_per_task(served: Served) -> None:
    messages = flood()
    done = asyncio.Event()

    async def flooding() -> AsyncIterator[AgentMessage]:
        for message in messages:
            yield message
        await done.wait()  # the stream stays open

    calm: asyncio.Queue[AgentMessage] = asyncio.Queue()
    calm.put_nowait(AgentMessage(hello=SessionHello(node_id=CALM, name="calm")))

    async def calm_requests() -> AsyncIterator[AgentMessage]:
        while True:
            yield await calm.get()

    pending_seen: list[int] = []
    acked_mid_flood: list[int] = []
    with structlog.testing.capture_logs() as logs:
        async with (
            grpc.aio.insecure_channel(served.address) as flood_channel,
            grpc.aio.insecure_channel(served.address) as calm_channel,
        ):
            calm_call = dispatcher_pb2_grpc.DispatcherStub(calm_channel).Session(calm_requests())
            assert isinstance(await asyncio.wait_for(calm_call.read(), 10), DispatcherMessage)
            flood_call = dispatcher_pb2_grpc.DispatcherStub(flood_channel).Session(flooding())
            sequence = 0
            while served.writer.accepted < REPORTS:
                sequence += 1
                calm.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=sequence)))
                while True:  # this heartbeat's ack (the outbox may fold older ones in)
                    ack = await asyncio.wait_for(calm_call.read(), 30)
                    assert isinstance(ack, DispatcherMessage)
                    if ack.heartbeat_ack.sequence == sequence:
                        break
                pending_seen.append(served.writer.pending)
                if served.writer.accepted < REPORTS:
                    acked_mid_flood.append(sequence)
            # The newest report is the one written.
            for _ in range(100):
                stored = await served.store.get(TASKS, FLOOD_TASK)
                if stored.status.message == f"report {REPORTS - 1}":
                    break
                await asyncio.sleep(0.1)
            done.set()
            flood_call.cancel()
            calm_call.cancel()
    assert stored.status.message == f"report {REPORTS - 1}"
    assert stored.status.state == TaskStatus.RUNNING
    assert acked_mid_flood, "no heartbeat of the other node was acknowledged during the flood"
    assert max(pending_seen) <= 1  # one task of the flooding node: one waiting report
    assert served.writer.accepted == REPORTS
    assert served.writer.superseded > 0  # folded into newer ones, never written
    other = await served.store.get(TASKS, CALM_TASK)
    assert other.status.state == TaskStatus.ASSIGNED  # the foreign reports wrote nothing
    refused = [e for e in logs if e["event"] == "task.status_rejected"]
    assert 1 <= len(refused) <= 20, f"{len(refused)} log lines for {FOREIGN} refused reports"
    assert refused[-1]["refused"] >= FOREIGN // 2
