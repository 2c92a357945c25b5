"""A session's outbox: the newest message of each kind, never a backlog.

Every message the dispatcher sends a node supersedes the one before of its kind:
an assignment set is the node's whole set, a network map the whole map, a
heartbeat ack answers the newest beat. So the outbox keeps one message per kind,
and a node that stops reading costs the controller at most one of each, however
long it stays connected. This is swarmkit's choice: its dispatcher sends state,
not events, and folds every change made while a send is blocked into the next.
A delta assignment set is folded into the set still waiting (`compose`), and a
delta network map into the map still waiting (`compose_maps`), so the versions
the agent sees follow on without a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from dockyard.common.map_delta import compose_maps, is_delta
from dockyard.controller.assignment_delta import compose
from dockyard.v1.dispatcher_pb2 import DispatcherMessage

__all__ = ["HELD_POLL", "Outbox"]

HELD_POLL = 0.05
"""Seconds between two looks at whether a held kind may go (the leader's lease)."""


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
            elif kind == "network" and is_delta(message.network):
                folded = compose_maps(waiting.network, message.network)
                if folded is not None:
                    message = DispatcherMessage(network=folded)
        self._waiting[kind] = message
        self._ready.set()

    def close(self) -> None:
        """End the stream: `get` answers None from now on, waiting messages are dropped."""
        self._closed = True
        self._waiting.clear()
        self._ready.set()

    async def get(
        self, sendable: Callable[[str], bool] = lambda kind: True
    ) -> DispatcherMessage | None:
        """The oldest waiting message of a kind `sendable` now; None once closed. While
        only other kinds wait, `sendable` is asked again every HELD_POLL seconds."""
        while True:
            if self._closed:
                return None
            for kind in self._waiting:
                if sendable(kind):
                    return self._waiting.pop(kind)
            self._ready.clear()
            if not self._waiting:
                await self._ready.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HELD_POLL):
                    await self._ready.wait()
