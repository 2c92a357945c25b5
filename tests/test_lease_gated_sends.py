"""Sets and maps leave a leader only while its lease is provably held, and one posted
while it is not (a keeper late under load) waits for it instead of being lost: the
assigner counts a posted set as sent, and a node with nothing more to be sent kept
its tasks ASSIGNED for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.server import leader_post
from dockyard.controller.sessions import AgentSession, SessionRegistry
from dockyard.controller.store import Store
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    AssignmentSet,
    DispatcherMessage,
    Heartbeat,
)
from tests.polling import wait_until
from tests.served_dispatcher import NodeCall, node_session, served_dispatcher


class Lease:
    """A leader whose lease is proven or not, as the test says."""

    def __init__(self) -> None:
        self.is_leader = True
        self.proven = False

    def holds(self) -> bool:
        return self.is_leader and self.proven


def a_set(version: int) -> DispatcherMessage:
    return DispatcherMessage(assignments=AssignmentSet(full=True, version=version))


def test_a_set_posted_while_the_lease_is_unproven_is_queued_not_dropped() -> None:
    lease, sessions = Lease(), SessionRegistry()
    session = AgentSession("s1", "n1", "127.0.0.1:1")
    sessions.open(session)
    post = leader_post(lease, sessions)  # type: ignore[arg-type]  # the two fields it reads
    assert post("n1", a_set(1))
    assert len(session.outbox) == 1
    lease.is_leader = False  # the term is over: nothing is queued any more
    assert not post("n1", a_set(2))


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    store = Store([etcd.endpoint], "/gated")
    await store.connect(5)
    yield store
    await store.close()


async def _read_all(node: NodeCall, into: list[DispatcherMessage]) -> None:
    """Every message the controller sends the node, until its stream ends."""
    try:
        while isinstance(message := await node.call.read(), DispatcherMessage):
            into.append(message)
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        pass


def kinds(messages: list[DispatcherMessage]) -> list[str]:
    return [m.WhichOneof("message") or "" for m in messages]


async def test_a_set_leaves_once_the_lease_is_proven_and_acks_never_wait(store: Store) -> None:
    lease = Lease()
    async with (
        served_dispatcher(store, lease.holds) as served,
        node_session(served.address, "g" * 20, "gated") as node,
    ):
        got: list[DispatcherMessage] = []
        reading = asyncio.create_task(_read_all(node, got))
        try:
            assert served.sessions.post(node.accepted.node_id, a_set(7))
            node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=1)))
            await wait_until(lambda: "heartbeat_ack" in kinds(got), "the ack", timeout=10)
            await asyncio.sleep(0.5)
            assert "assignments" not in kinds(got)  # held while the lease is unproven
            lease.proven = True
            await wait_until(lambda: "assignments" in kinds(got), "the set", timeout=10)
            assert [m.assignments.version for m in got if m.HasField("assignments")] == [7]
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


async def test_a_set_waiting_for_the_lease_goes_nowhere_once_the_session_closes(
    store: Store,
) -> None:
    lease = Lease()
    async with (
        served_dispatcher(store, lease.holds) as served,
        node_session(served.address, "h" * 20, "ended") as node,
    ):
        got: list[DispatcherMessage] = []
        reading = asyncio.create_task(_read_all(node, got))
        node_id = node.accepted.node_id
        assert served.sessions.post(node_id, a_set(3))
        await asyncio.sleep(0.2)
        served.sessions.close(node_id)  # the term ended meanwhile
        lease.proven = True
        await asyncio.wait_for(reading, 10)  # the stream ended
        assert "assignments" not in kinds(got)
