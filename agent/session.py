"""The agent's one session to a controller: hello, heartbeats, assignments.

When a session ends, the agent asks every controller it knows where the leader is
(`Dispatcher.Leader`, a long poll answered the moment a controller knows of a leader
other than the one lost) and connects to the first answer at once; only when none
answers does it back off (exponentially, with jitter) before trying the next. It
follows a "not the leader" answer to the leader, and gives up only when the
controller refuses this node for good (its name is taken, its request is invalid).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import structlog

from dockyard.agent.identity import NodeIdentity
from dockyard.common.authz import not_a_controller
from dockyard.common.backoff import Backoff
from dockyard.common.map_delta import apply_map_delta, is_delta
from dockyard.common.pki import CONTROLLER_TLS_NAME
from dockyard.common.session_limits import (
    MAX_SESSION_MESSAGE_BYTES,
    assignment_set_problem,
    status_batches,
)
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    AssignmentSet,
    AssignmentsResync,
    DispatcherMessage,
    Heartbeat,
    LeaderRequest,
    NetworkMap,
    NetworkMapResync,
    SessionHello,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import NodeDescription

log = structlog.get_logger(__name__)

# An assignment set carries the data of the secrets its tasks use (500 KiB each at most).
# Each attempt's channel has subchannels of its own: in gRPC's process-wide pool a new
# channel would share another channel's connection to the same address, still backing
# off (up to minutes) after the controller was down, and fail at once with its stale
# "connection refused" although the controller is back.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_SESSION_MESSAGE_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
]
# Over TLS the controller's certificate must name the controller role, whatever address
# was dialled: a node's certificate (which names its own address) is refused.
TLS_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]

CONNECT_TIMEOUT = 10.0
# Missing this many heartbeat acks in a row means the controller is gone.
MISSED_ACKS = 3
PERMANENT_REFUSALS = {
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
}
LEADER_HINT = re.compile(r"the leader is at (\S+)")
# How long a controller is asked to wait for a new leader (a few leases' worth).
LEADER_WAIT = 15.0
# Reconnections made at once (a leader found, a redirect followed) before backing off
# again, should they keep failing without a session accepted.
MAX_QUICK = 3
NOT_LEADER = "not the leader"

AssignmentHandler = Callable[[AssignmentSet], Awaitable[None]]
NetworkHandler = Callable[[NetworkMap], Awaitable[None]]


class SessionRefused(Exception):
    """The controller will not take this node as it is configured."""


class SessionLost(Exception):
    pass


@dataclass
class SessionStatus:
    state: str = "connecting"  # connecting | connected | disconnected
    controller: str = ""
    session_id: str = ""
    heartbeat_period: float = 0.0
    accepts_status_batches: bool = False  # the controller said so when it accepted
    beats_on_any_message: bool = False  # the controller said so: beats may be skipped
    heartbeats_skipped: int = 0  # skipped while other messages flowed both ways
    last_ack_wall: float = 0.0
    rtt_seconds: float = 0.0
    rtts: list[float] = field(default_factory=list)  # recent round trips, for benchmarks


class ControllerSession:
    """Keeps one session open to whichever controller leads.

    Args:
        controllers: controller addresses to try in turn.
        identity: this node's ID and requested name.
        describe: returns the node description sent in every hello.
        on_assignments: called with every assignment set the controller sends.
        on_network: called with every network map the controller sends.
        credentials: mutual TLS credentials, made anew for every connection (so a
            renewed certificate is picked up); None for plaintext (--insecure).
    """

    def __init__(
        self,
        controllers: list[str],
        identity: NodeIdentity,
        describe: Callable[[], NodeDescription],
        on_assignments: AssignmentHandler | None = None,
        on_network: NetworkHandler | None = None,
        backoff: Backoff | None = None,
        keep_rtts: int = 0,
        credentials: Callable[[], grpc.ChannelCredentials] | None = None,
    ) -> None:
        if not controllers:
            raise ValueError("at least one controller address is needed")
        self.controllers = controllers
        self.identity = identity
        self._describe = describe
        self._on_assignments = on_assignments
        self._on_network = on_network
        self._backoff = backoff or Backoff(initial=0.2, maximum=10.0)
        self._keep_rtts = keep_rtts
        self._credentials = credentials
        self._outbox: asyncio.Queue[AgentMessage] | None = None
        self._sent: dict[int, float] = {}
        # Since the last heartbeat: whether the agent sent another message, and received
        # one (then the next beat may be skipped: each side heard the other).
        self._sent_other = False
        self._received = False
        self._held_version = 0  # of the set applied on this session (0: none yet)
        self._resync_asked = False
        self._map: NetworkMap | None = None  # the map held on this session (None: none yet)
        self._map_resync_asked = False
        self.status = SessionStatus()
        self.connected = asyncio.Event()
        self._terms: dict[str, int] = {}  # controller address -> term of its last session

    async def run(self) -> None:
        """Stay connected until cancelled; raise SessionRefused on a final refusal."""
        index = 0
        target = self.controllers[0]
        quick = 0  # reconnections made at once, without a session accepted in between
        while True:
            self.status.controller = target
            lost = target  # the leader this attempt lost ("" : it reached a follower)
            hint: str | None = None  # where a follower said the leader is
            try:
                await self._run_once(target)
                self._backoff.reset()
            except grpc.aio.AioRpcError as exc:
                hint = self._after_error(exc, target)
                if hint is not None and quick < MAX_QUICK:  # follow it at once
                    target, quick = hint, quick + 1
                    continue
                if NOT_LEADER in (exc.details() or ""):
                    lost = ""
            except (SessionLost, TimeoutError) as exc:
                log.warning("session.lost", controller=target, reason=str(exc) or "timeout")
                self._backoff.reset()
            finally:
                if self._mark_disconnected():
                    quick = 0
            if quick < MAX_QUICK and (leader := await self._find_leader(lost)):
                log.info("session.leader_found", lost=lost or target, leader=leader)
                target, quick = leader, quick + 1
                continue
            index = (index + 1) % len(self.controllers)
            target = hint or self.controllers[index]
            quick = 0
            await asyncio.sleep(self._backoff.next_delay())

    async def _find_leader(self, lost: str) -> str:
        """Ask every known controller at once where the leader is, now that `lost`
        failed: the first address answered ("" when none answers)."""
        asked = [asyncio.ensure_future(self._ask_leader(a, lost)) for a in self.controllers]
        try:
            for answer in asyncio.as_completed(asked):
                with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                    if address := await answer:
                        return address
            return ""
        finally:
            for task in asked:
                task.cancel()
            await asyncio.gather(*asked, return_exceptions=True)

    async def _ask_leader(self, controller: str, lost: str) -> str:
        request = LeaderRequest(
            not_address=lost, wait_seconds=LEADER_WAIT, lost_term=self._terms.get(lost, 0)
        )
        async with self._channel(controller) as channel:
            stub = dispatcher_pb2_grpc.DispatcherStub(channel)
            answer = await stub.Leader(
                request,
                timeout=LEADER_WAIT + CONNECT_TIMEOUT,
            )
        return answer.address

    def _channel(self, target: str) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials(), options=TLS_OPTIONS)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    def _after_error(self, exc: grpc.aio.AioRpcError, target: str) -> str | None:
        """The leader a controller pointed to (None: it did not); raise SessionRefused
        on a final refusal."""
        details = exc.details() or ""
        if exc.code() in PERMANENT_REFUSALS:
            log.error("session.refused", controller=target, code=exc.code().name, reason=details)
            raise SessionRefused(f"controller at {target} refused this node: {details}") from exc
        if self._credentials is not None and not_a_controller(details):
            log.error(
                "session.not_a_controller",
                controller=target,
                reason=f"the server at {target} holds no controller certificate of "
                "this cluster (a node's?): refused, trying the next controller",
            )
        hint = LEADER_HINT.search(details)
        if hint and hint.group(1) != target:
            log.info("session.redirect", controller=target, leader=hint.group(1))
            return hint.group(1)
        log.warning("session.failed", controller=target, code=exc.code().name, reason=details)
        return None

    def leader_terms(self) -> dict[str, int]:
        """The term of each controller's last session with this agent, by address."""
        return dict(self._terms)

    def channel(self) -> grpc.aio.Channel:
        """A new channel to the controller the session talks to (the leader, once
        connected), with the session's credentials; the caller closes it."""
        target = self.status.controller or self.controllers[0]
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials(), options=TLS_OPTIONS)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    def report(self, report: TaskStatusReport) -> bool:
        """Queue a task status for the controller; False while disconnected."""
        return self.report_many([report])

    def report_many(self, reports: Sequence[TaskStatusReport]) -> bool:
        """Queue task statuses for the controller: in bounded batches when it takes
        them (`SessionAccepted.accepts_status_batches`), else one message each; False
        while disconnected."""
        if self._outbox is None:
            return False
        if not self.status.accepts_status_batches:
            for report in reports:
                self._outbox.put_nowait(AgentMessage(task_status=report))
            return True
        for batch in status_batches(reports):
            self._outbox.put_nowait(AgentMessage(task_statuses=batch))
            self._sent_other = True
        return True

    async def _run_once(self, target: str) -> None:
        self.status.state = "connecting"
        outbox: asyncio.Queue[AgentMessage] = asyncio.Queue()
        hello = SessionHello(
            node_id=self.identity.node_id,
            name=self.identity.name,
            description=self._describe(),
            accepts_deltas=True,
            accepts_map_deltas=True,
        )
        outbox.put_nowait(AgentMessage(hello=hello))

        async def requests() -> AsyncIterator[AgentMessage]:
            while True:
                yield await outbox.get()

        async with self._channel(target) as channel:
            call = dispatcher_pb2_grpc.DispatcherStub(channel).Session(requests())
            try:
                first = await asyncio.wait_for(call.read(), CONNECT_TIMEOUT)
                if not isinstance(first, DispatcherMessage) or not first.HasField("accepted"):
                    raise SessionLost("controller closed the session before accepting it")
                self._accepted(first, target)
                self._outbox = outbox
                self._sent.clear()
                self._held_version, self._resync_asked = 0, False  # a new session: full first
                self._map, self._map_resync_asked = None, False
                await self._converse(call, outbox)
            finally:
                self._outbox = None
                call.cancel()

    async def _converse(
        self,
        call: grpc.aio.StreamStreamCall[AgentMessage, DispatcherMessage],
        outbox: asyncio.Queue[AgentMessage],
    ) -> None:
        """Heartbeat while receiving, until the session ends (always with an error)."""
        ended: Exception | None = None
        async with asyncio.TaskGroup() as group:
            beating = group.create_task(self._heartbeats(outbox), name="session-heartbeats")
            try:
                await self._receive(call)
            except Exception as exc:  # raised below, outside the group, as it came
                ended = exc
            finally:
                beating.cancel()
        if ended is not None:
            raise ended

    def _accepted(self, message: DispatcherMessage, target: str) -> None:
        accepted = message.accepted
        self.status.state = "connected"
        self.status.session_id = accepted.session_id
        self.status.heartbeat_period = accepted.heartbeat_period_seconds
        self.status.accepts_status_batches = accepted.accepts_status_batches
        self.status.beats_on_any_message = accepted.beats_on_any_message
        self._terms[target] = accepted.leader_term
        self.connected.set()
        log.info(
            "session.connected",
            controller=target,
            session_id=accepted.session_id,
            node_id=self.identity.node_id,
            heartbeat_period=accepted.heartbeat_period_seconds,
        )

    async def _heartbeats(self, outbox: asyncio.Queue[AgentMessage]) -> None:
        """A heartbeat each period, but none when, since the last, this agent sent a
        status batch and received a message, to a controller that takes any message as
        a beat (the controller heard the agent, the agent the controller: the beat and
        its ack would tell neither anything new)."""
        sequence = 0
        self._sent_other = self._received = False
        while True:
            if self.status.beats_on_any_message and self._sent_other and self._received:
                self.status.heartbeats_skipped += 1
            else:
                sequence += 1
                self._sent[sequence] = time.monotonic()
                outbox.put_nowait(AgentMessage(heartbeat=Heartbeat(sequence=sequence)))
            self._sent_other = self._received = False
            await asyncio.sleep(self.status.heartbeat_period)

    async def _receive(
        self, call: grpc.aio.StreamStreamCall[AgentMessage, DispatcherMessage]
    ) -> None:
        """Read and apply messages until the stream ends; a read that waits longer than
        `_read_limit()` ends the session with TimeoutError (the time spent applying a
        message does not count)."""
        async with asyncio.timeout(None) as scope:
            deadline = _ReadDeadline(scope, self._read_limit)
            try:
                await self._read_all(call, deadline)
            finally:
                deadline.close()

    def _read_limit(self) -> float:
        return max(1.0, self.status.heartbeat_period * MISSED_ACKS)

    async def _read_all(
        self,
        call: grpc.aio.StreamStreamCall[AgentMessage, DispatcherMessage],
        deadline: _ReadDeadline,
    ) -> None:
        while True:
            deadline.reading()
            message = await call.read()
            deadline.read()
            if not isinstance(message, DispatcherMessage):
                raise SessionLost("controller ended the session")
            self._received = True
            kind = message.WhichOneof("message")
            if kind == "heartbeat_ack":
                self._acked(
                    message.heartbeat_ack.sequence, message.heartbeat_ack.heartbeat_period_seconds
                )
            elif kind == "assignments" and self._on_assignments is not None:
                await self._take(message.assignments, self._on_assignments)
            elif kind == "network" and self._on_network is not None:
                network_map = self._whole_map(message.network)
                if network_map is not None:
                    await _handle(kind, self._on_network(network_map))

    async def _take(self, assignments: AssignmentSet, handler: AssignmentHandler) -> None:
        if log.bind().is_enabled_for(logging.DEBUG):  # its fields cost a walk of the set
            log.debug(
                "session.assignments",
                full=assignments.full,
                version=assignments.version,
                tasks=len(assignments.tasks),
                removed=len(assignments.removed_task_ids),
                secrets=sorted(s.id for s in assignments.secrets),
                bytes=assignments.ByteSize(),
            )  # never the data
        if self._follows(assignments) and _acceptable(assignments):
            applied = await _handle("assignments", handler(assignments))
            self._held_version = assignments.version if applied else 0
            self._resync_asked = self._resync_asked and not assignments.full

    def _follows(self, assignments: AssignmentSet) -> bool:
        """Whether to apply a set: a full one always; a delta only on top of exactly the
        set it was computed against, else a full set is asked for (once until it comes)
        and the delta dropped, so a lost or reordered delta never stops a task."""
        if assignments.full:
            return True
        held = self._held_version
        if held and assignments.base_version == held:
            return True
        log.warning(
            "session.assignments_gap",
            held_version=held,
            base_version=assignments.base_version,
            version=assignments.version,
        )
        if not self._resync_asked and self._outbox is not None:
            self._resync_asked = True
            resync = AssignmentsResync(held_version=held)
            self._outbox.put_nowait(AgentMessage(resync_assignments=resync))
        return False

    def _whole_map(self, network_map: NetworkMap) -> NetworkMap | None:
        """The whole map a map from the controller makes: a full one as it is, a delta
        applied to the map held only if that is exactly its base (else None, the delta
        dropped whole and a full map asked for, once until one comes)."""
        held = self._map
        if not is_delta(network_map):
            self._map, self._map_resync_asked = network_map, False
            return network_map
        if held is not None and held.version == network_map.base_version:
            try:
                self._map = apply_map_delta(held, network_map)
                return self._map
            except ValueError as exc:  # not made on this map after all
                log.error("session.network_map_refused", reason=str(exc))
        else:
            log.warning(
                "session.network_map_gap",
                held_version=held.version if held is not None else 0,
                base_version=network_map.base_version,
                version=network_map.version,
            )
        if not self._map_resync_asked and self._outbox is not None:
            self._map_resync_asked = True
            resync = NetworkMapResync(held_version=held.version if held is not None else 0)
            self._outbox.put_nowait(AgentMessage(resync_network=resync))
        return None

    def _acked(self, sequence: int, period: float) -> None:
        sent = self._sent.pop(sequence, None)
        for older in [s for s in self._sent if s < sequence]:  # acks the controller folded
            del self._sent[older]
        if sent is not None:
            self.status.rtt_seconds = time.monotonic() - sent
            if self._keep_rtts:
                self.status.rtts.append(self.status.rtt_seconds)
                del self.status.rtts[: -self._keep_rtts]
        self.status.last_ack_wall = time.time()
        if period > 0:
            self.status.heartbeat_period = period

    def _mark_disconnected(self) -> bool:
        """Mark the session down; whether it had been accepted."""
        was_connected = self.status.state == "connected"
        if was_connected:
            log.warning("session.disconnected", controller=self.status.controller)
        self.status.state = "disconnected"
        self.status.session_id = ""
        self.connected.clear()
        return was_connected


class _ReadDeadline:
    """A deadline on each read of the stream, with one timer for the whole session
    rather than one per read (`asyncio.timeout` around each read scheduled and cancelled
    a timer for every message): the timer is re-armed only when it fires, at the limit
    after the read then waiting, and ends the enclosing `scope` (TimeoutError) when that
    read has waited the limit. Between two reads (a message being applied) it waits."""

    __slots__ = ("_limit", "_loop", "_scope", "_since", "_timer")

    def __init__(self, scope: asyncio.Timeout, limit: Callable[[], float]) -> None:
        self._scope = scope
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None  # when the read now waiting began
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(limit(), self._check)

    def reading(self) -> None:
        self._since = self._loop.time()

    def read(self) -> None:
        self._since = None
        if self._scope.when() is not None:
            # The check expired the scope in the loop's turn in which the read ended: the
            # read made it, and the message must not be cut off while it is applied.
            self._scope.reschedule(None)
            self._timer = self._loop.call_later(self._limit(), self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now, limit, since = self._loop.time(), self._limit(), self._since
        if since is not None and now - since >= limit:
            self._timer = None
            self._scope.reschedule(now)  # the read has waited too long: expire now
            return
        self._timer = self._loop.call_at((now if since is None else since) + limit, self._check)


def _acceptable(assignments: AssignmentSet) -> bool:
    """Whether to act on a set: one over the bounds is refused whole (the node keeps
    running what it had), never taken in part."""
    problem = assignment_set_problem(assignments)
    if problem is None:
        return True
    log.error("session.assignments_refused", reason=problem)
    return False


async def _handle(kind: str, handling: Awaitable[None]) -> bool:
    """Apply what the controller sent; a failure to apply it (a full state disk, say) is
    logged and the session goes on: the agent keeps heartbeating and reporting, and
    the next message of the kind is applied afresh (a failed set makes the next delta
    ask for a full set). Not
    caught, it would end the session task, and with it the agent."""
    try:
        await handling
    except Exception as exc:  # any failure of a handler, logged
        log.error(
            "session.apply_failed", kind=kind, error=str(exc) or type(exc).__name__, exc_info=True
        )
        return False
    return True
