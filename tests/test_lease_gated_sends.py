"""Sets and maps leave a leader only while its lease is provably held, and one posted
while it is not (a keeper late under load) waits for it instead of being lost: the
assigner counts a posted set as sent, and a node with nothing more to be sent kept
its tasks ASSIGNED for good."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

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
from tests.served_dispatcher import NodeCall, Served, node_session, served_dispatcher
from tests.views import background


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


@dataclass
class Received:
    """What the controller sent the node, and whether its stream has ended."""

    messages: list[DispatcherMessage] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def kinds(self) -> list[str]:
        return [m.WhichOneof("message") or "" for m in self.messages]


async def _read_all(node: NodeCall, into: Received) -> None:
    try:
        while isinstance(message := await node.call.read(), DispatcherMessage):
            into.messages.append(message)
    except grpc.aio.AioRpcError:
        pass
    finally:
        into.ended.set()


@contextlib.asynccontextmanager
async def gated_node(
    store: Store, lease: Lease, node_id: str
) -> AsyncIterator[tuple[Served, str, NodeCall, Received]]:
    """A dispatcher under `lease`, and a node's session on it read in the background."""
    received = Received()
    async with (
        served_dispatcher(store, lease.holds) as served,
        node_session(served.address, node_id, "gated") as node,
        background(_read_all(node, received), "read"),
    ):
        yield served, node.accepted.node_id, node, received


async def test_a_set_leaves_once_the_lease_is_proven_and_acks_never_wait(store: Store) -> None:
    lease = Lease()
    async with gated_node(store, lease, "g" * 20) as (served, node_id, node, got):
        assert served.sessions.post(node_id, a_set(7))
        node.outgoing.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=1)))
        await wait_until(lambda: "heartbeat_ack" in got.kinds(), "the ack", timeout=10)
        await asyncio.sleep(0.5)
        assert "assignments" not in got.kinds()  # held while the lease is unproven
        lease.proven = True
        await wait_until(lambda: "assignments" in got.kinds(), "the set", timeout=10)
        sets = [m.assignments.version for m in got.messages if m.HasField("assignments")]
        assert sets == [7]


async def test_a_set_waiting_for_the_lease_goes_nowhere_once_the_session_closes(
    store: Store,
) -> None:
    lease = Lease()
    async with gated_node(store, lease, "h" * 20) as (served, node_id, _, got):
        assert served.sessions.post(node_id, a_set(3))
        await asyncio.sleep(0.2)
        served.sessions.close(node_id)  # the term ended meanwhile
        lease.proven = True
        await asyncio.wait_for(got.ended.wait(), 10)  # the stream ended
        assert "assignments" not in got.kinds()
