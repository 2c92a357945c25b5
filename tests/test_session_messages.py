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
from dockyard.v1.dispatcher_pb2 import AgentMessage, DispatcherMessage, Heartbeat
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
