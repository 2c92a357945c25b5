"""The dispatcher: one bidirectional session per agent.

Agents send a hello, then heartbeats and task status; the dispatcher answers
with the session's acceptance and heartbeat acks, and streams what the leader's
loops put into the node's outbox (assignment sets, network maps). Sessions and
liveness live in the session registry (controller/sessions.py); the node monitor
turns liveness into READY/DOWN in the store. Only the leader accepts sessions.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from dockyard.common.authz import peer_identity
from dockyard.common.pki import NODE
from dockyard.common.session_limits import status_batch_problem, status_report_problem
from dockyard.common.validation import MAX_REF_LENGTH
from dockyard.controller.assignments import Assigner, StatusWriter
from dockyard.controller.attachments import AttachmentRegistry, NotAttachable
from dockyard.controller.errors import details_for, status_for
from dockyard.controller.network_map import NetworkMapper
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.sessions import AgentSession, SessionRegistry
from dockyard.controller.store import LeadershipLost
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    AttachNetworkRequest,
    AttachNetworkResponse,
    DetachNetworkRequest,
    DetachNetworkResponse,
    DispatcherMessage,
    HeartbeatAck,
    LeaderAnswer,
    LeaderRequest,
    PruneAttachmentsRequest,
    SessionAccepted,
    TaskStatusBatch,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import Node

__all__ = ["Dispatcher", "Term"]

log = structlog.get_logger(__name__)

HELLO_TIMEOUT = 10.0
# The longest an agent's question for the leader is held open, and its address's bound.
MAX_LEADER_WAIT = 30.0
MAX_ADDRESS_LENGTH = 512
FENCED_KINDS = frozenset({"assignments", "network"})
"""What a node acts on, sent only while the leader's lease is provably held (heartbeat
acks are not: a leader late at renewing is still the session's peer)."""


@dataclass(frozen=True)
class Term:
    """What a leader term lends the dispatcher while it lasts.

    Args:
        status_writer: takes the agents' task reports.
        registry: registers nodes with the term's fenced writes (None: the
            dispatcher's own, unfenced).
        assigner: sends a node its whole set when its session opens.
        network_mapper: sends a node its network map when its session opens.
        attachments: records standalone containers on attachable networks.
    """

    status_writer: StatusWriter
    registry: NodeRegistry | None = None
    assigner: Assigner | None = None
    network_mapper: NetworkMapper | None = None
    attachments: AttachmentRegistry | None = None


class Dispatcher(dispatcher_pb2_grpc.DispatcherServicer):
    def __init__(
        self,
        registry: NodeRegistry,
        sessions: SessionRegistry,
        cluster_id: str,
        heartbeat_period: float,
        grace: float,
        leader_address: Callable[[], str | None],
        term: Callable[[], Term | None] = lambda: None,
        revoked: Callable[[str], bool] = lambda serial: False,
        await_leader: Callable[[str, float, int], Awaitable[str]] | None = None,
        leader_term: Callable[[], int] = lambda: 0,
        lease_proven: Callable[[], bool] = lambda: True,
    ) -> None:
        """
        Args:
            sessions: where sessions are kept and the leader's loops post messages.
            leader_address: None while this controller leads, else the leader's
                address (or "" when no leader is known).
            term: the current leader term's collaborators (None between terms:
                reports are dropped, no set is sent).
            revoked: whether a certificate serial (hex) is revoked.
            await_leader: the leader's address once one other than the given one (in
                the given term) is known, waiting at most the given seconds
                (`Leadership.await_leader`).
            leader_term: this controller's term while it leads (told to each agent
                whose session it accepts, which names it when it asks for a leader).
            lease_proven: whether this leader's lease is provably alive now
                (`Leadership.holds`): assignment sets and network maps have no etcd
                fence, so they leave only while it is.
        """
        self._registry = registry
        self._sessions = sessions
        self._cluster_id = cluster_id
        self.heartbeat_period = heartbeat_period
        self.grace = grace
        self._leader_address = leader_address
        self._term = term
        self._revoked = revoked
        self._await_leader = await_leader
        self._leader_term = leader_term
        self._lease_proven = lease_proven

    async def Leader(
        self,
        request: LeaderRequest,
        context: grpc.aio.ServicerContext[LeaderRequest, LeaderAnswer],
    ) -> LeaderAnswer:
        """Where the leader is, once one other than `not_address` is known (a long
        poll of at most MAX_LEADER_WAIT): agents ask it when their session ends."""
        if not 0 <= request.wait_seconds <= MAX_LEADER_WAIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"wait_seconds: must be 0 to {MAX_LEADER_WAIT:g}",
            )
        if len(request.not_address) > MAX_ADDRESS_LENGTH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"not_address: at most {MAX_ADDRESS_LENGTH} characters",
            )
        if self._await_leader is None:
            return LeaderAnswer(address=self._leader_address() or "")
        address = await self._await_leader(
            request.not_address, request.wait_seconds, request.lost_term
        )
        return LeaderAnswer(address=address)

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
        try:
            # The reader's failure ends the stream with it, instead of being lost.
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(session, request_iterator))
                self._sessions.count("in", "hello")
                self._sessions.count("out", "accepted")
                yield self._accepted(session)
                await self._greet(session, node)
                count = self._sessions.count
                while (message := await session.outbox.get(self._sendable)) is not None:
                    count("out", message.WhichOneof("message") or "")
                    yield message
                reader.cancel()
        finally:
            session.close()
            if self._sessions.remove(session):
                term = self._term()
                if term is not None and term.assigner is not None:
                    term.assigner.forget(session.node_id)
            log.info("session.closed", node_id=session.node_id, session_id=session.session_id)

    async def AttachNetwork(
        self,
        request: AttachNetworkRequest,
        context: grpc.aio.ServicerContext[AttachNetworkRequest, AttachNetworkResponse],
    ) -> AttachNetworkResponse:
        registry = await self._attachments(request.node_id, context)
        try:
            network, record = await registry.attach(
                request.node_id,
                request.network,
                request.container_id,
                request.container_name,
                list(request.aliases),
            )
        except NotAttachable as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except Exception as exc:
            await self._abort_for(exc, context)
        return AttachNetworkResponse(
            network=network, address=record.address, attachment_id=record.id
        )

    async def DetachNetwork(
        self,
        request: DetachNetworkRequest,
        context: grpc.aio.ServicerContext[DetachNetworkRequest, DetachNetworkResponse],
    ) -> DetachNetworkResponse:
        registry = await self._attachments(request.node_id, context)
        try:
            count = await registry.detach(request.node_id, request.container_id, request.network)
        except Exception as exc:
            await self._abort_for(exc, context)
        return DetachNetworkResponse(detached=count)

    async def PruneAttachments(
        self,
        request: PruneAttachmentsRequest,
        context: grpc.aio.ServicerContext[PruneAttachmentsRequest, DetachNetworkResponse],
    ) -> DetachNetworkResponse:
        registry = await self._attachments(request.node_id, context)
        try:
            count = await registry.prune(request.node_id, list(request.container_ids))
        except Exception as exc:
            await self._abort_for(exc, context)
        return DetachNetworkResponse(detached=count)

    async def _attachments(
        self, node_id: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AttachmentRegistry:
        """The term's attachment registry, for a caller that is ``node_id`` (or the
        admin); aborts the call otherwise, or when this controller does not lead."""
        leader = self._leader_address()
        term = self._term()
        if leader is not None or term is None or term.attachments is None:
            where = f"the leader is at {leader}" if leader else "no leader is ready yet"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader: {where}")
        identity = peer_identity(context)
        if identity is not None and identity.role == NODE and identity.id != node_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is node {identity.id}'s; it cannot attach containers "
                f"of node {node_id[:MAX_REF_LENGTH]}",
            )
        assert term is not None and term.attachments is not None
        return term.attachments

    async def _abort_for(self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(exc, LeadershipLost):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader any more: {exc}")
        code = status_for(exc)
        if code is None:
            raise exc
        await context.abort(code, details_for(exc))

    def _accepted(self, session: AgentSession) -> DispatcherMessage:
        return DispatcherMessage(
            accepted=SessionAccepted(
                session_id=session.session_id,
                node_id=session.node_id,
                cluster_id=self._cluster_id,
                heartbeat_period_seconds=self.heartbeat_period,
                leader_term=self._leader_term(),
                accepts_status_batches=True,
                beats_on_any_message=True,
            )
        )

    def _sendable(self, kind: str) -> bool:
        """Whether a message of this kind may leave now. Sets and maps wait while the
        lease is not provably held (a keeper late under load, a paused process) rather
        than being dropped: the loop that posted one counts it as sent and may have
        nothing more for this node. A term that ends closes the session, and with it
        what waits."""
        return kind not in FENCED_KINDS or self._lease_proven()

    async def _greet(self, session: AgentSession, node: Node) -> None:
        """The node's network map, then its whole set, into its outbox. A full set
        replaces everything the agent runs: none is sent until the leader's view is
        loaded (the term's greeting sends it then)."""
        term = self._term()
        if term is None:
            return
        if term.network_mapper is not None:  # before tasks: they may need the bridge
            term.network_mapper.send_now(node)
        if term.assigner is not None:
            await term.assigner.send_now(session.node_id)

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
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.node_id: at most {MAX_REF_LENGTH} characters",
            )
        identity = peer_identity(context)
        if identity is not None and identity.role == NODE and identity.id != hello.node_id:
            # A node speaks only as itself: the ID in its certificate.
            log.warning(
                "session.impersonation",
                cert_node_id=identity.id,
                hello_node_id=hello.node_id,
                remote=context.peer(),
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is node {identity.id}'s; it cannot open a session "
                f"as node {hello.node_id}",
            )
        current = self._sessions.get(hello.node_id)
        if current is not None:
            if self._sessions.seconds_since_seen(hello.node_id, 0.0) < self.grace:
                await context.abort(
                    grpc.StatusCode.ABORTED,
                    f"node {hello.node_id} already has a live session "
                    f"from {current.remote_address}",
                )
            current.close()
        remote = context.peer()
        try:
            node = await self._node_registry().register(hello, remote)
        except LeadershipLost as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader any more: {exc}")
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                raise
            log.warning(
                "session.refused",
                name=hello.name[:200],
                node_id=hello.node_id,
                reason=details_for(exc),
            )
            await context.abort(code, details_for(exc))
        serial = identity.serial if identity is not None else ""
        session = AgentSession(
            secrets.token_hex(8),
            node.id,
            remote,
            serial=serial,
            deltas=hello.accepts_deltas,
            map_deltas=hello.accepts_map_deltas,
        )
        self._sessions.open(session)
        if serial and self._revoked(serial):  # revoked while it registered: no session
            session.close()
        self._sessions.beat(node.id)
        log.info("session.opened", node_id=node.id, name=node.spec.name, remote=remote)
        return session, node

    def _node_registry(self) -> NodeRegistry:
        """The term's registry (its writes fenced by leadership); registrations before
        the term's loops are ready go through the unfenced one."""
        term = self._term()
        return term.registry if term is not None and term.registry is not None else self._registry

    def _take_status(self, session: AgentSession, report: TaskStatusReport) -> None:
        """One report (an agent that sends no batches: older, or to an older leader)."""
        term = self._term()
        if term is not None:
            self._take_report(session, term.status_writer, report)

    def _take_statuses(self, session: AgentSession, batch: TaskStatusBatch) -> None:
        """A batch of reports, each checked and taken (or refused) on its own; one over
        the batch bounds is refused whole."""
        term = self._term()
        if term is None:
            return
        problem = status_batch_problem(batch)
        if problem is not None:
            session.refuse("", problem)
            return
        writer = term.status_writer
        for report in batch.reports:
            self._take_report(session, writer, report)

    @staticmethod
    def _take_report(session: AgentSession, writer: StatusWriter, report: TaskStatusReport) -> None:
        problem = status_report_problem(report)
        if problem is not None:  # over the session's bounds (so over the etcd write's)
            session.refuse(report.task_id, problem)
            return
        rejected = writer.accept(session.node_id, report)
        if rejected is not None and rejected.reason != "unknown task":
            session.refuse(rejected.task_id, rejected.reason)

    async def _resync(self, session: AgentSession, held_version: int) -> None:
        """The agent could not apply a delta: its whole set again (none before the
        term's loops are ready: the term's greeting sends it then)."""
        term = self._term()
        log.info("session.resync", node_id=session.node_id, held_version=held_version)
        if term is not None and term.assigner is not None and not session.outbox.closed:
            await term.assigner.send_now(session.node_id)

    def _resync_network(self, session: AgentSession, held_version: int) -> None:
        """The agent could not apply a delta map: its whole map again (none before the
        term's loops are ready: the term's greeting sends it then)."""
        term = self._term()
        log.info("session.resync_network", node_id=session.node_id, held_version=held_version)
        if term is not None and term.network_mapper is not None and not session.outbox.closed:
            term.network_mapper.resend(session.node_id)

    async def _read(self, session: AgentSession, requests: AsyncIterator[AgentMessage]) -> None:
        try:
            count = self._sessions.count
            async for message in requests:
                kind = message.WhichOneof("message")
                count("in", kind or "")
                if kind == "heartbeat":
                    self._sessions.beat(session.node_id)
                    session.outbox.put(
                        DispatcherMessage(
                            heartbeat_ack=HeartbeatAck(
                                sequence=message.heartbeat.sequence,
                                heartbeat_period_seconds=self.heartbeat_period,
                            )
                        )
                    )
                elif kind == "task_statuses":
                    self._sessions.heard(session.node_id)  # the agent may skip a beat
                    self._take_statuses(session, message.task_statuses)
                elif kind == "task_status":
                    self._take_status(session, message.task_status)
                elif kind == "resync_assignments":
                    await self._resync(session, message.resync_assignments.held_version)
                elif kind == "resync_network":
                    self._resync_network(session, message.resync_network.held_version)
        except grpc.aio.AioRpcError:
            pass  # the stream broke: the session ends
        finally:
            session.close()
