"""Delta network maps over a real Session stream (the dispatcher on a gRPC server, its
view fed by a real etcd): a session whose hello takes deltas gets a full map first,
then deltas on it; its request for a full map (`resync_network`) is answered with one;
a new session (a reconnect) starts again from a full map."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.store import SERVICES, TASKS, Store
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    NetworkMap,
    NetworkMapResync,
)
from dockyard.v1.workloads_pb2 import Service, Task
from tests.served_dispatcher import NodeCall, Served, node_session, served_dispatcher

NODE = "d" * 20


@pytest.fixture
async def served(etcd: EtcdServer) -> AsyncIterator[Served]:
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    async with served_dispatcher(store, maps=True) as served:
        yield served
    await store.close()


async def next_map(node: NodeCall) -> NetworkMap:
    while True:
        message = await asyncio.wait_for(node.call.read(), 10)
        assert isinstance(message, DispatcherMessage)
        if message.HasField("network"):
            return message.network


async def start_task(served: Served) -> None:
    """A service with one RUNNING task, in etcd and then in the mapper's view."""
    service = Service(id="s" * 24)
    service.spec.name = "web"
    await served.store.create(SERVICES, service.id, service)
    task = Task(id="t" * 24, service_id=service.id, node_id=NODE)
    task.desired_state = TaskState.RUNNING
    task.status.state = TaskState.RUNNING  # type: ignore[assignment]
    task.status.address = "10.77.0.5"
    await served.store.create(TASKS, task.id, task)
    assert served.mapper is not None
    for _ in range(500):
        if task.id in served.mapper._state.tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the view never saw the task")


async def test_a_session_gets_a_full_map_then_deltas_and_a_full_map_when_it_asks(
    served: Served,
) -> None:
    assert served.mapper is not None
    async with node_session(served.address, NODE, "deltas", map_deltas=True) as node:
        first = await next_map(node)
        assert first.version and not first.base_version
        await start_task(served)
        assert served.mapper.look()
        delta = await next_map(node)
        assert delta.base_version == first.version
        assert [(s.name, list(s.addresses)) for s in delta.services] == [("web", ["10.77.0.5"])]
        resync = NetworkMapResync(held_version=first.version)
        node.outgoing.put_nowait(AgentMessage(resync_network=resync))
        full = await next_map(node)
        assert not full.base_version and full.version > delta.version
        assert [s.name for s in full.services] == ["web"]
    async with node_session(served.address, NODE, "deltas", map_deltas=True) as node:
        again = await next_map(node)  # a new session: a full map, whatever the last held
        assert not again.base_version and again.version > full.version
        assert [s.name for s in again.services] == ["web"]


async def test_a_session_without_deltas_gets_full_maps_only(served: Served) -> None:
    assert served.mapper is not None
    async with node_session(served.address, NODE, "plain") as node:
        first = await next_map(node)
        await start_task(served)
        assert served.mapper.look()
        second = await next_map(node)
        assert (first.version, first.base_version, second.version, second.base_version) == (
            0,
            0,
            0,
            0,
        )
        assert [s.name for s in second.services] == ["web"]
