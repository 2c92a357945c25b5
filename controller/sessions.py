"""The agents' open sessions and when each node was last heard: one registry.

The dispatcher opens and closes sessions here and records heartbeats; the leader's
loops put messages into a node's outbox with `post` (never through the dispatcher);
the API, the node monitor and the metrics ask it who is connected and when a node
was last heard. A node has at most one session, so at most one outbox: a node that
stops reading fills only its own, which keeps one message of each kind
(controller/outbox.py), and its next read is the newest whole state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from dockyard.common.session_limits import MAX_SESSION_MESSAGE_BYTES
from dockyard.common.timestamps import wall_time
from dockyard.common.validation import MAX_REF_LENGTH
from dockyard.controller.outbox import Outbox
from dockyard.v1.dispatcher_pb2 import DispatcherMessage

__all__ = ["AgentSession", "Liveness", "Post", "SessionRegistry"]

log = structlog.get_logger(__name__)

Post = Callable[[str, DispatcherMessage], bool]
"""Queue a message on a node's outbox; False when it has no session or it is too large."""


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
    deltas: bool = False
    """The agent applies delta assignment sets (it said so in its hello)."""
    map_deltas: bool = False
    """The agent applies delta network maps (it said so in its hello)."""

    def refuse(self, task_id: str, reason: str) -> None:
        """Count a refused report; log the 1st, 2nd, 4th, 8th, ... of the session, so a
        node sending refused reports in a loop writes a few log lines, not one each."""
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:
            log.warning(
                "task.status_rejected",
                node_id=self.node_id,
                task_id=task_id[:MAX_REF_LENGTH],
                reason=reason,
                refused=self.refused,
            )

    def close(self) -> None:
        self.outbox.close()


@dataclass(frozen=True)
class Liveness:
    """When a node was last heard: monotonic for expiry, wall clock for display."""

    monotonic: float
    wall: float


class SessionRegistry:
    """Open sessions by node, and when each node was last heard (also after its
    session closed: the node monitor measures silence from it)."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        self._seen: dict[str, Liveness] = {}
        self.heartbeats_received = 0
        self.messages: dict[tuple[str, str], int] = {}
        """Session messages by (direction, kind): "in" from agents, "out" to them (the
        metrics' `dockyard_session_messages_total`; a dict, not a Prometheus counter,
        as it is counted once per message on the dispatcher's hot path)."""

    def count(self, direction: str, kind: str) -> None:
        """Count one session message of `kind` ("in": from an agent, "out": to one)."""
        key = (direction, kind)
        self.messages[key] = self.messages.get(key, 0) + 1

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._sessions

    def node_ids(self) -> list[str]:
        """The nodes with an open session now."""
        return list(self._sessions)

    def is_open(self, node_id: str) -> bool:
        """Whether the node has a session that takes messages (a closed one stays here
        until its stream ends: at a term's end every session is closed at once)."""
        session = self._sessions.get(node_id)
        return session is not None and not session.outbox.closed

    def open_node_ids(self) -> list[str]:
        """The nodes whose session takes messages now."""
        return [i for i, s in self._sessions.items() if not s.outbox.closed]

    def get(self, node_id: str) -> AgentSession | None:
        return self._sessions.get(node_id)

    def open(self, session: AgentSession) -> None:
        """Make `session` its node's session (the caller closed any earlier one)."""
        self._sessions[session.node_id] = session

    def remove(self, session: AgentSession) -> bool:
        """Forget `session` if it is still its node's; whether it was."""
        if self._sessions.get(session.node_id) is not session:
            return False
        del self._sessions[session.node_id]
        return True

    def takes_deltas(self, node_id: str) -> bool:
        """Whether the node's session takes delta assignment sets."""
        session = self._sessions.get(node_id)
        return session is not None and session.deltas

    def takes_map_deltas(self, node_id: str) -> bool:
        """Whether the node's session takes delta network maps."""
        session = self._sessions.get(node_id)
        return session is not None and session.map_deltas

    def beat(self, node_id: str) -> None:
        self.heard(node_id)
        self.heartbeats_received += 1

    def heard(self, node_id: str) -> None:
        """The node sent something other than a heartbeat, which counts as one (its
        session said `beats_on_any_message`): seen now, not counted as a heartbeat."""
        self._seen[node_id] = Liveness(time.monotonic(), wall_time())

    def last_seen(self, node_id: str) -> Liveness | None:
        return self._seen.get(node_id)

    def seconds_since_seen(self, node_id: str, default: float) -> float:
        seen = self._seen.get(node_id)
        return time.monotonic() - (seen.monotonic if seen else default)

    def post(self, node_id: str, message: DispatcherMessage) -> bool:
        """Queue `message` on the node's outbox (replacing a waiting one of its kind);
        False when the node has no session or the message is too large to send."""
        session = self._sessions.get(node_id)
        if session is None or not _fits(node_id, message):
            return False
        session.outbox.put(message)
        return True

    def close(self, node_id: str) -> None:
        """End a node's session (its certificate was revoked, or it was removed)."""
        session = self._sessions.get(node_id)
        if session is not None:
            session.close()

    def close_serial(self, serial: str) -> None:
        """End every session opened with the certificate `serial` (it was revoked)."""
        for session in list(self._sessions.values()):
            if session.serial == serial:
                log.warning("session.revoked", node_id=session.node_id, serial=serial)
                session.close()

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            session.close()


def _fits(node_id: str, message: DispatcherMessage) -> bool:
    """Whether the node can take `message` (its receive limit): a larger one is not sent,
    and the node keeps what it had."""
    size = message.ByteSize()
    if size <= MAX_SESSION_MESSAGE_BYTES:
        return True
    log.error(
        "session.message_too_large",
        node_id=node_id,
        kind=message.WhichOneof("message"),
        bytes=size,
        limit=MAX_SESSION_MESSAGE_BYTES,
    )
    return False
