"""`GET /v1/events`: changes to nodes, services and tasks as Server-Sent Events.

One etcd watch (`EventHub`) feeds every stream, on the leader and on followers
alike (it reads etcd, not the leader's in-memory view). Each change is encoded
once into an SSE frame and handed to every subscriber's bounded queue:

    id: 1234-0
    event: task.updated
    data: {"kind": "task", "type": "updated", "id": "...", "revision": 1234, "record": {...}}

The id is `<etcd revision>-<index within that revision>` (a transaction that
writes 128 tasks has one revision), so `Last-Event-ID` (or `?since=`) resumes
exactly where a client stopped. A plain revision `1234` means "after everything
at 1234". The hub keeps the last `history` frames; a resume from further back
gets its own etcd watch from that revision, and one from before etcd's
compaction gets an `event: reset` (list again, then resume) and the stream ends.

Bounds: at most `max_streams` streams; a subscriber whose queue fills up (it
reads more slowly than the cluster changes) is dropped after its queued frames
are written, and resumes from its last id when it reconnects. Memory is bounded
by the history plus the queues, and frames are shared between the queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.json_format import MessageToDict

from dockyard.common.taskscope import TaskScope
from dockyard.controller.store import (
    CLUSTER,
    NODES,
    SERVICES,
    TASKS,
    Compacted,
    Kind,
    Store,
    StoreError,
    WatchEvent,
)

log = structlog.get_logger(__name__)

KINDS: list[Kind[Any]] = [NODES, SERVICES, TASKS]
KIND_NAMES = {NODES.name: "node", SERVICES.name: "service", TASKS.name: "task"}
WHOLE = sys.maxsize  # index of "every event of this revision"
KEEPALIVE = b": keep-alive\n\n"
MAX_CHUNK = 256 * 1024  # bytes written to one client at a time


@dataclass(frozen=True, order=True)
class Position:
    """Where an event is in etcd's history: its revision and its index in it."""

    revision: int
    index: int

    def __str__(self) -> str:
        return str(self.revision) if self.index == WHOLE else f"{self.revision}-{self.index}"


def parse_position(text: str) -> Position:
    """`1234` or `1234-5` (an event id); ValueError otherwise."""
    revision, dash, index = text.strip().partition("-")
    if not revision.isdigit() or (dash and not index.isdigit()) or len(text) > 40:
        raise ValueError(f"not an event id (REVISION or REVISION-INDEX): {text[:40]!r}")
    return Position(int(revision), int(index) if dash else WHOLE)


def record_json(record: Any) -> dict[str, Any]:
    """A record as the JSON API and `dockyard ... -o json` show it."""
    return MessageToDict(
        record, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def encode(event: WatchEvent[Any], position: Position) -> bytes:
    """One SSE frame for a watch event."""
    kind = KIND_NAMES[event.kind]
    data: dict[str, Any] = {"kind": kind, "id": event.id, "revision": event.revision}
    if event.deleted or event.value is None:
        data["type"] = "removed"
    else:
        meta = event.value.meta  # created_at == updated_at only when the record is new
        data["type"] = "created" if meta.created_at == meta.updated_at else "updated"
        data["record"] = record_json(event.value)
    return (
        f"id: {position}\nevent: {kind}.{data['type']}\n"
        f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    ).encode()


def control_frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Subscriber:
    """One stream's queue of frames, bounded to `limit`."""

    def __init__(self, limit: int) -> None:
        self._frames: deque[bytes] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.overflowed = False
        self.closed = False

    def push(self, frame: bytes) -> bool:
        """Queue a frame without waiting; False (and overflowed) when the queue is full."""
        if self.closed or self.overflowed:
            return False
        if len(self._frames) >= self._limit:
            self.overflowed = True
            self._wake.set()
            return False
        self._frames.append(frame)
        self._wake.set()
        return True

    async def put(self, frame: bytes) -> None:
        """Queue a frame, waiting for room (a private source: backpressure, no drop)."""
        while len(self._frames) >= self._limit and not self.closed:
            self._space.clear()
            await self._space.wait()
        self._frames.append(frame)
        self._wake.set()

    def close(self, final: bytes | None = None) -> None:
        """End the stream after what is queued (and `final`, past the limit)."""
        if final is not None and not self.closed:
            self._frames.append(final)
        self.closed = True
        self._wake.set()
        self._space.set()

    @property
    def finished(self) -> bool:
        return (self.closed or self.overflowed) and not self._frames

    async def take(self, timeout: float, max_bytes: int = MAX_CHUNK) -> list[bytes]:
        """Queued frames, oldest first, up to `max_bytes` (at least one); [] when
        nothing came within `timeout` seconds. What is left stays queued, so a slow
        client's backlog counts against its queue limit, not the socket's buffer."""
        if not self._frames and not (self.closed or self.overflowed):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        frames: list[bytes] = []
        size = 0
        while self._frames and (not frames or size + len(self._frames[0]) <= max_bytes):
            frame = self._frames.popleft()
            frames.append(frame)
            size += len(frame)
        if not self._frames:
            self._wake.clear()
        self._space.set()
        return frames


class EventHub:
    """The shared watch and its subscribers.

    The watch starts with the first subscriber and stops `idle_stop` seconds
    after the last one leaves (its history goes with it). It is an item of the
    hub's task scope (`close` ends it): should it fail (a bug: etcd's errors are
    retried), the failure is logged (`task.failed`) and every stream ends, so the
    clients resume from their last id, on a new watch; the server goes on.
    """

    def __init__(
        self,
        store: Store,
        *,
        history: int = 2048,
        queue_limit: int = 4096,
        idle_stop: float = 60.0,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        if queue_limit < history:
            raise ValueError("queue_limit must hold a full history replay")
        self._store = store
        self._history_limit = history
        self.queue_limit = queue_limit
        self._idle_stop = idle_stop
        self._on_drop = on_drop
        self._subscribers: set[Subscriber] = set()
        self._history: deque[tuple[Position, bytes]] = deque()
        # Every event after `floor` is in the history or still to come.
        self.floor = Position(0, WHOLE)
        self.position = Position(0, WHOLE)  # the last event broadcast
        self._task: asyncio.Task[None] | None = None
        self._scope = TaskScope("event-hub")
        self._starting = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self.events_seen = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, after: Position | None) -> tuple[Subscriber, Position] | None:
        """A live subscriber that first gets the history after `after` (None: from
        now), and the position it starts after.

        None when `after` is older than the history: the caller reads etcd itself.
        Raises StoreError when etcd cannot be read to start the watch.
        """
        await self._ensure_running()
        if after is not None and after < self.floor:
            return None
        subscriber = Subscriber(self.queue_limit)
        if after is not None:
            for position, frame in self._history:
                if position > after:
                    subscriber.push(frame)
        self._subscribers.add(subscriber)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return subscriber, min(after, self.position) if after is not None else self.position

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._task is not None and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self._idle_stop, self._stop_idle)

    async def close(self) -> None:
        """End every stream and the watch (the server is stopping)."""
        for subscriber in list(self._subscribers):
            subscriber.close()
        self._subscribers.clear()
        await self._stop()
        await self._scope.close()

    # -- internals ------------------------------------------------------------

    async def _ensure_running(self) -> None:
        async with self._starting:
            if self._task is not None:
                return
            revision = await current_revision(self._store)
            self.floor = self.position = Position(revision, WHOLE)
            self._history.clear()
            await self._scope.open()
            self._task = self._scope.spawn(self._watch(), "events-watch")
            log.debug("events.watch_started", revision=revision)

    def _stop_idle(self) -> None:
        self._idle = None
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None
            self._history.clear()
            log.debug("events.watch_stopped", reason="idle")

    async def _stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        try:
            await self._run()
        except Exception:
            self._task = None  # the next subscriber starts a new watch
            self._history.clear()
            self._reset_all("the event watch failed")  # they resume from their last id
            raise  # logged by the scope

    async def _run(self) -> None:
        while True:
            try:
                async for position, event in positioned(self._store, self.position):
                    self._broadcast(position, encode(event, position))
            except Compacted as exc:
                # Our own place in history is gone (etcd was compacted while the
                # watch was away): every subscriber must list again.
                log.warning("events.compacted", error=str(exc))
                self._reset_all(str(exc))
                revision = await _retrying(current_revision, self._store)
                self.floor = self.position = Position(revision, WHOLE)
            except StoreError as exc:
                log.warning("events.watch_error", error=str(exc))
                await asyncio.sleep(1.0)

    def _broadcast(self, position: Position, frame: bytes) -> None:
        self.position = position
        self.events_seen += 1
        self._history.append((position, frame))
        while len(self._history) > self._history_limit:
            self.floor = self._history.popleft()[0]
        for subscriber in list(self._subscribers):
            if not subscriber.push(frame):  # too slow (or already closed): it leaves
                self._subscribers.discard(subscriber)
                if subscriber.overflowed:
                    self._on_drop()

    def _reset_all(self, reason: str) -> None:
        frame = control_frame("reset", {"reason": reason})
        for subscriber in list(self._subscribers):
            subscriber.close(frame)
        self._subscribers.clear()
        self._history.clear()


async def current_revision(store: Store) -> int:
    """etcd's current revision (read with the one-record cluster kind)."""
    _, revision = await store.list_all(CLUSTER)
    return revision


async def _retrying(call: Callable[[Store], Any], store: Store) -> Any:
    while True:
        try:
            return await call(store)
        except StoreError as exc:
            log.warning("events.watch_error", error=str(exc))
            await asyncio.sleep(1.0)


async def positioned(store: Store, after: Position) -> Any:
    """Watch events after `after`, each with its position (an async iterator).

    Positions are deterministic: a revision's events come in the order of the
    transaction's writes, so a watch restarted inside a revision skips exactly
    the events already seen.
    """
    start = after.revision if after.index == WHOLE else after.revision - 1
    revision, index = -1, -1
    async for event in store.watch_kinds(KINDS, start):
        if event.revision == revision:
            index += 1
        else:
            revision, index = event.revision, 0
        position = Position(revision, index)
        if position > after:
            yield position, event


async def pump_from_etcd(store: Store, after: Position, subscriber: Subscriber) -> None:
    """Feed a subscriber from its own etcd watch (a resume older than the history)."""
    try:
        async for position, event in positioned(store, after):
            await subscriber.put(encode(event, position))
            if subscriber.closed:
                return
    except Compacted as exc:
        subscriber.close(
            control_frame(
                "reset",
                {
                    "reason": f"event {after} is no longer in etcd's history ({exc}): "
                    "list again, then resume from the new revision"
                },
            )
        )
    except StoreError as exc:
        subscriber.close(control_frame("error", {"reason": str(exc)}))
