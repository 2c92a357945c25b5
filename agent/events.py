"""`EventBus`: what happened on this node (containers, images, volumes, networks), live.

The agent's services publish an `Event` for each change they make (a container created,
started, dead, destroyed; an image pulled, tagged, deleted; a volume made or removed);
front doors such as the Docker Engine API's `GET /events` subscribe. A short history
answers `since`. Every subscriber has a bounded queue: one that reads too slowly loses
events (and is told how many), it never makes the agent's memory grow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import structlog

__all__ = ["HISTORY", "QUEUE_SIZE", "Event", "EventBus", "Subscription"]

log = structlog.get_logger(__name__)

HISTORY = 1024
"""Events kept for `since` (docker keeps 256 in memory)."""
QUEUE_SIZE = 1024
"""Events a subscriber may fall behind by before it loses the newest ones."""


@dataclass(frozen=True, slots=True)
class Event:
    """One change on the node.

    Attributes:
        type: `container`, `image`, `volume` or `network`.
        action: What happened (`create`, `start`, `die`, `pull`, `delete`, ...).
        actor_id: The object's id (a container id, an image reference, a volume name).
        attributes: More about it (`name`, `image`, `exitCode`, labels, ...).
        time_ns: When, in nanoseconds since the epoch.
    """

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_ns: int = 0


class Subscription:
    """A subscriber's bounded queue of events; iterate it to receive them."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.dropped = 0
        """Events this subscriber lost because its queue was full."""

    def offer(self, event: Event) -> None:
        """Queue an event; a full queue drops it (the reader is too slow)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("events.subscriber_slow", queue=self._queue.maxsize)

    async def get(self) -> Event:
        """The next event (waits for one)."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()


class EventBus:
    """Fan-out of the node's events to any number of subscribers.

    Args:
        history: How many past events `since` can replay.
        queue_size: Each subscriber's queue bound.
    """

    def __init__(self, history: int = HISTORY, queue_size: int = QUEUE_SIZE) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._subscribers: list[Subscription] = []
        self._queue_size = queue_size

    def publish(
        self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None
    ) -> Event:
        """Record an event and hand it to every subscriber (never blocks)."""
        event = Event(type, action, actor_id, dict(attributes or {}), time.time_ns())
        self._history.append(event)
        for subscriber in list(self._subscribers):
            subscriber.offer(event)
        return event

    def past(self, since_ns: int, until_ns: int | None = None) -> list[Event]:
        """Kept events from `since_ns` on (and before `until_ns`, when given)."""
        return [
            e
            for e in self._history
            if e.time_ns >= since_ns and (until_ns is None or e.time_ns <= until_ns)
        ]

    def subscribe(self) -> Subscription:
        """A new subscriber, receiving every event published from now on."""
        subscription = Subscription(self, self._queue_size)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop feeding a subscriber (nothing if it is gone already)."""
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        """How many subscribers there are now."""
        return len(self._subscribers)
