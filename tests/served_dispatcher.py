"""The controller's dispatcher on a real gRPC server (the controller's options), with its
status writer on a cluster state fed by a real etcd, and a node's Session call made by
hand (no agent code): what the session tests talk to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from dockyard.controller.assignments import StatusWriter
from dockyard.controller.dispatcher import Dispatcher, Term
from dockyard.controller.network_map import NetworkMapper
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.server import SERVER_OPTIONS
from dockyard.controller.sessions import SessionRegistry
from dockyard.controller.store import Store
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    SessionAccepted,
    SessionHello,
)
from tests.ports import free_port
from tests.views import watched_view

__all__ = ["NodeCall", "Served", "node_session", "served_dispatcher"]


@dataclass
class Served:
    dispatcher: Dispatcher
    sessions: SessionRegistry
    writer: StatusWriter
    address: str
    store: Store
    mapper: NetworkMapper | None = None


@contextlib.asynccontextmanager
async def served_dispatcher(
    store: Store, lease_proven: Callable[[], bool] = lambda: True, maps: bool = False
) -> AsyncIterator[Served]:
    """Serve until the block ends (`store` connected; the caller closes it);
    `lease_proven`: the leader's lease as the dispatcher sees it; `maps`: the term has a
    network mapper (its loop not run: the test calls `look`)."""
    async with watched_view(store) as state:
        sessions = SessionRegistry()
        writer = StatusWriter(store, state)
        mapper = None
        if maps:
            mapper = NetworkMapper(
                state, sessions.post, sessions.node_ids, takes_deltas=sessions.takes_map_deltas
            )
        term = Term(writer, network_mapper=mapper)
        dispatcher = Dispatcher(
            NodeRegistry(store),
            sessions,
            "cluster",
            heartbeat_period=5.0,
            grace=30.0,
            leader_address=lambda: None,
            term=lambda: term,
            lease_proven=lease_proven,
        )
        writing = asyncio.create_task(writer.run())
        server = grpc.aio.server(options=SERVER_OPTIONS)
        dispatcher_pb2_grpc.add_DispatcherServicer_to_server(dispatcher, server)
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        try:
            yield Served(dispatcher, sessions, writer, address, store, mapper)
        finally:
            sessions.close_all()
            await server.stop(None)
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)


@dataclass
class NodeCall:
    """A node's open Session call: what the test queues in `outgoing` is sent in order."""

    call: Any  # grpc.aio.StreamStreamCall[AgentMessage, DispatcherMessage]
    outgoing: asyncio.Queue[AgentMessage]
    accepted: SessionAccepted


@contextlib.asynccontextmanager
async def node_session(
    address: str,
    node_id: str,
    name: str,
    options: Sequence[tuple[str, Any]] = (),
    map_deltas: bool = False,
) -> AsyncIterator[NodeCall]:
    """Open a Session as node `node_id`: its hello sent and the controller's acceptance
    read; the call is cancelled when the block ends."""
    outgoing: asyncio.Queue[AgentMessage] = asyncio.Queue()
    hello = SessionHello(node_id=node_id, name=name, accepts_map_deltas=map_deltas)
    outgoing.put_nowait(AgentMessage(hello=hello))

    async def requests() -> AsyncIterator[AgentMessage]:
        while True:
            yield await outgoing.get()

    async with grpc.aio.insecure_channel(address, options=list(options)) as channel:
        call = dispatcher_pb2_grpc.DispatcherStub(channel).Session(requests())
        first = await asyncio.wait_for(call.read(), 10)
        assert isinstance(first, DispatcherMessage) and first.HasField("accepted"), first
        try:
            yield NodeCall(call, outgoing, first.accepted)
        finally:
            call.cancel()
