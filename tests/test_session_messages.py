"""Session messages counted by kind and direction on the dispatcher, and exposed as
`dockyard_session_messages_total` (controller/sessions.py, controller/http/metrics.py):
what the benchmarks divide by the tasks placed to give messages per task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.http.metrics import ControllerMetrics
from dockyard.controller.store import Store
from dockyard.v1.dispatcher_pb2 import AgentMessage, DispatcherMessage, Heartbeat, TaskStatusBatch
from tests.served_dispatcher import Served, node_session, served_dispatcher


@pytest.fixture
async def served(etcd: EtcdServer) -> AsyncIterator[Served]:
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    async with served_dispatcher(store) as served:
        yield served
    await store.close()


async def test_messages_are_counted_by_direction_and_kind(served: Served) -> None:
    async with node_session(served.address, "a" * 20, "node-a") as node:
        for sequence in (1, 2):
            node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=sequence)))
            ack = await asyncio.wait_for(node.call.read(), 10)
            assert isinstance(ack, DispatcherMessage) and ack.HasField("heartbeat_ack")
    assert served.sessions.messages == {
        ("in", "hello"): 1,
        ("in", "heartbeat"): 2,
        ("out", "accepted"): 1,
        ("out", "heartbeat_ack"): 2,
    }
    metrics = ControllerMetrics()
    metrics.count_session_messages(lambda: served.sessions.messages)
    body, _ = await metrics.exposition()
    lines = body.decode().splitlines()
    assert 'dockyard_session_messages_total{direction="in",kind="heartbeat"} 2.0' in lines
    assert 'dockyard_session_messages_total{direction="out",kind="accepted"} 1.0' in lines


async def test_a_status_batch_counts_as_a_heartbeat(served: Served) -> None:
    node_id = "b" * 20
    async with node_session(served.address, node_id, "node-b") as node:
        assert node.accepted.beats_on_any_message
        opened = served.sessions.last_seen(node_id)
        assert opened is not None
        beats: list[str] = []
        served.sessions.beat = beats.append  # type: ignore[method-assign]  # not seen by beats
        await asyncio.sleep(0.05)
        node.outgoing.put_nowait(AgentMessage(task_statuses=TaskStatusBatch()))
        node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=1)))
        await asyncio.wait_for(node.call.read(), 10)  # the ack: the batch was read before
        seen = served.sessions.last_seen(node_id)
        assert seen is not None and seen.monotonic > opened.monotonic
        assert beats == [node_id]  # the one sent, which did not make it seen
