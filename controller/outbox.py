"""A session's outbox: the newest message of each kind, never a backlog.

Every message the dispatcher sends a node supersedes the one before of its kind:
an assignment set is the node's whole set, a network map the whole map, a
heartbeat ack answers the newest beat. So the outbox keeps one message per kind,
and a node that stops reading costs the controller at most one of each, however
long it stays connected. This is swarmkit's choice: its dispatcher sends state,
not events, and folds every change made while a send is blocked into the next.
A delta assignment set is folded into the set still waiting (`compose`), so the
versions the agent sees follow on without a gap.
"""

from __future__ import annotations

import asyncio

from dockyard.controller.assignment_delta import compose
from dockyard.v1.dispatcher_pb2 import DispatcherMessage

__all__ = ["Outbox"]


class Outbox:
    """Messages waiting for one session's stream, at most one per kind.

    A message of a kind already waiting replaces it in place (its turn is kept,
    so a network map queued before a set still goes first); a delta set is merged
    into the set waiting.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, DispatcherMessage] = {}
        self._ready = asyncio.Event()
        self._closed = False
        self.superseded = 0
        """Messages replaced by a newer one of their kind before the node read them."""

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, message: DispatcherMessage) -> None:
        """Queue `message`, replacing a waiting one of its kind; nothing once closed."""
        if self._closed:
            return
        kind = message.WhichOneof("message") or ""
        waiting = self._waiting.get(kind)
        if waiting is not None:
            self.superseded += 1
            if kind == "assignments" and not message.assignments.full:
                merged = compose(waiting.assignments, message.assignments)
                if merged is not None:  # else the agent finds the gap and asks again
                    message = DispatcherMessage(assignments=merged)
        self._waiting[kind] = message
        self._ready.set()

    def close(self) -> None:
        """End the stream: `get` answers None from now on, waiting messages are dropped."""
        self._closed = True
        self._waiting.clear()
        self._ready.set()

    async def get(self) -> DispatcherMessage | None:
        """The oldest waiting message; None once closed."""
        while not self._waiting:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        kind = next(iter(self._waiting))
        return self._waiting.pop(kind)
