"""The dispatcher: one bidirectional session per agent.

Agents send a hello, then heartbeats and task status; the dispatcher answers
with the session's acceptance, heartbeat acks and assignment sets. Liveness is
kept in memory here (`last_seen`); the node monitor turns it into READY/DOWN
in the store. Only the leader accepts sessions.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import structlog

from dockyard.common.authz import peer_identity
from dockyard.common.pki import NODE
from dockyard.common.session_limits import MAX_SESSION_MESSAGE_BYTES, status_report_problem
from dockyard.common.timestamps import wall_time
from dockyard.common.validation import MAX_REF_LENGTH
from dockyard.controller.assignments import Assigner, StatusWriter
from dockyard.controller.errors import details_for, status_for
from dockyard.controller.network_map import NetworkMapper
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.outbox import Outbox
from dockyard.controller.store import LeadershipLost
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    HeartbeatAck,
    SessionAccepted,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import Node

log = structlog.get_logger(__name__)

HELLO_TIMEOUT = 10.0


@dataclass
class AgentSession:
    session_id: str
    node_id: str
    remote_address: str
    outbox: Outbox = field(default_factory=Outbox)
    serial: str = ""
    """The serial (hex) of the certificate the session was opened with; "" without TLS."""
    opened_at: float = field(default_factory=time.monotonic)
    refused: int = 0
    """Status reports refused (oversized, or on another node's task)."""

    def refuse(self, task_id: str, reason: str) -> None:
        """Count a refused report; log the 1st, 2nd, 4th, 8th, ... of the session, so a
        node sending refused reports in a loop writes a few log lines, not one each."""
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:
            log.warning("task.status_rejected", node_id=self.node_id,
                        task_id=task_id[:MAX_REF_LENGTH], reason=reason,
                        refused=self.refused)  # fmt: skip

    def close(self) -> None:
        self.outbox.close()


@dataclass
class Liveness:
    """When the dispatcher last heard from a node: monotonic for expiry,
    wall clock for display."""

    monotonic: float
    wall: float


class Dispatcher(dispatcher_pb2_grpc.DispatcherServicer):
    def __init__(
        self,
        registry: NodeRegistry,
        cluster_id: str,
        heartbeat_period: float,
        grace: float,
        leader_address: Callable[[], str | None],
        revoked: Callable[[str], bool] = lambda serial: False,
    ) -> None:
        """
        Args:
            leader_address: None while this controller leads, else the leader's
                address (or "" when no leader is known).
            revoked: whether a certificate serial (hex) is revoked.
        """
        self._registry = registry
        self._cluster_id = cluster_id
        self.heartbeat_period = heartbeat_period
        self.grace = grace
        self._leader_address = leader_address
        self._revoked = revoked
        self.sessions: dict[str, AgentSession] = {}
        self.last_seen: dict[str, Liveness] = {}
        self.heartbeats_received = 0
        # Set while this controller leads (the loops that need the cluster view).
        self.assigner: Assigner | None = None
        self.status_writer: StatusWriter | None = None
        self.network_mapper: NetworkMapper | None = None
        # The term's registry (its writes fenced by leadership); registrations before
        # the term's loops are hooked go through the unfenced one.
        self.term_registry: NodeRegistry | None = None

    def beat(self, node_id: str) -> None:
        self.last_seen[node_id] = Liveness(time.monotonic(), wall_time())
        self.heartbeats_received += 1

    def seconds_since_seen(self, node_id: str, default: float) -> float:
        seen = self.last_seen.get(node_id)
        return time.monotonic() - (seen.monotonic if seen else default)

    def send(self, node_id: str, message: DispatcherMessage) -> bool:
        """Queue `message` on the node's session (replacing a waiting one of its kind);
        False when the node has no session or the message is too large to send."""
        session = self.sessions.get(node_id)
        if session is None or not _fits(node_id, message):
            return False
        session.outbox.put(message)
        return True

    def close(self, node_id: str) -> None:
        """End a node's session (its certificate was revoked, or it was removed)."""
        session = self.sessions.get(node_id)
        if session is not None:
            session.close()

    def close_serial(self, serial: str) -> None:
        """End every session opened with the certificate `serial` (it was revoked)."""
        for session in list(self.sessions.values()):
            if session.serial == serial:
                log.warning("session.revoked", node_id=session.node_id, serial=serial)
                session.close()

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close()

    async def Session(
        self,
        request_iterator: AsyncIterator[AgentMessage],
        context: grpc.aio.ServicerContext[AgentMessage, DispatcherMessage],
    ) -> AsyncIterator[DispatcherMessage]:
        leader = self._leader_address()
        if leader is not None:
            where = f"the leader is at {leader}" if leader else "no leader is elected yet"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader: {where}")
        hello = await self._read_hello(request_iterator, context)
        session, node = await self._open(hello, context)
        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            yield DispatcherMessage(
                accepted=SessionAccepted(
                    session_id=session.session_id,
                    node_id=session.node_id,
                    cluster_id=self._cluster_id,
                    heartbeat_period_seconds=self.heartbeat_period,
                )
            )
            if self.network_mapper is not None:  # before tasks: they may need the bridge
                self.network_mapper.send_now(node)
            # A full set replaces everything the agent runs: send none until the
            # leader's view is loaded (the assigner sends it then).
            if self.assigner is not None:
                await self.assigner.send_now(session.node_id)
            while (message := await session.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            if self.sessions.get(session.node_id) is session:
                del self.sessions[session.node_id]
                if self.assigner is not None:
                    self.assigner.forget(session.node_id)
            log.info("session.closed", node_id=session.node_id, session_id=session.session_id)

    async def _read_hello(
        self,
        request_iterator: AsyncIterator[AgentMessage],
        context: grpc.aio.ServicerContext[AgentMessage, DispatcherMessage],
    ) -> AgentMessage:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session must start with a hello")
        if first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session must start with a hello")
        return first

    async def _open(
        self,
        first: AgentMessage,
        context: grpc.aio.ServicerContext[AgentMessage, DispatcherMessage],
    ) -> tuple[AgentSession, Node]:
        hello = first.hello
        if len(hello.node_id) > MAX_REF_LENGTH:  # it is echoed in errors: keep them small
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"hello.node_id: at most {MAX_REF_LENGTH} characters")  # fmt: skip
        identity = peer_identity(context)
        if identity is not None and identity.role == NODE and identity.id != hello.node_id:
            # A node speaks only as itself: the ID in its certificate.
            log.warning("session.impersonation", cert_node_id=identity.id,
                        hello_node_id=hello.node_id, remote=context.peer())  # fmt: skip
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is node {identity.id}'s; it cannot open a session "
                f"as node {hello.node_id}",
            )
        current = self.sessions.get(hello.node_id)
        if current is not None:
            if self.seconds_since_seen(hello.node_id, 0.0) < self.grace:
                await context.abort(
                    grpc.StatusCode.ABORTED,
                    f"node {hello.node_id} already has a live session "
                    f"from {current.remote_address}",
                )
            current.close()
        remote = context.peer()
        try:
            node = await (self.term_registry or self._registry).register(hello, remote)
        except LeadershipLost as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader any more: {exc}")
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                raise
            log.warning("session.refused", name=hello.name[:200], node_id=hello.node_id,
                        reason=details_for(exc))  # fmt: skip
            await context.abort(code, details_for(exc))
        serial = identity.serial if identity is not None else ""
        session = AgentSession(secrets.token_hex(8), node.id, remote, serial=serial)
        self.sessions[node.id] = session
        if serial and self._revoked(serial):  # revoked while it registered: no session
            session.close()
        self.beat(node.id)
        log.info("session.opened", node_id=node.id, name=node.spec.name, remote=remote)
        return session, node

    def _take_status(self, session: AgentSession, report: TaskStatusReport) -> None:
        writer = self.status_writer
        if writer is None:
            return
        problem = status_report_problem(report)
        if problem is not None:  # over the session's bounds (so over the etcd write's)
            session.refuse(report.task_id, problem)
            return
        rejected = writer.accept(session.node_id, report)
        if rejected is not None and rejected.reason != "unknown task":
            session.refuse(rejected.task_id, rejected.reason)

    async def _read(self, session: AgentSession, requests: AsyncIterator[AgentMessage]) -> None:
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "heartbeat":
                    self.beat(session.node_id)
                    session.outbox.put(
                        DispatcherMessage(
                            heartbeat_ack=HeartbeatAck(
                                sequence=message.heartbeat.sequence,
                                heartbeat_period_seconds=self.heartbeat_period,
                            )
                        )
                    )
                elif kind == "task_status":
                    self._take_status(session, message.task_status)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()


def _fits(node_id: str, message: DispatcherMessage) -> bool:
    """Whether the node can take `message` (its receive limit): a larger one is not sent,
    and the node keeps what it had."""
    size = message.ByteSize()
    if size <= MAX_SESSION_MESSAGE_BYTES:
        return True
    log.error("session.message_too_large", node_id=node_id, kind=message.WhichOneof("message"),
              bytes=size, limit=MAX_SESSION_MESSAGE_BYTES)  # fmt: skip
    return False
