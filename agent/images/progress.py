"""Progress events of pulls and pushes, one stream of events per layer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ProgressCallback", "ProgressEvent", "QueuedProgress", "Status", "ignore_progress"]


class Status(StrEnum):
    """What is happening to one layer (or config blob)."""

    WAITING = "waiting"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    EXTRACTING = "extracting"
    DONE = "done"
    ALREADY_EXISTS = "already exists"
    UPLOADING = "uploading"
    PUSHED = "pushed"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of one blob's transfer.

    Attributes:
        digest: The blob digest (`sha256:...`); `id` is its short form.
        status: What is happening.
        current: Bytes transferred so far.
        total: Blob size in bytes (0 when unknown).
    """

    digest: str
    status: Status
    current: int = 0
    total: int = 0

    @property
    def id(self) -> str:
        """The 12-hex short digest docker prints per layer."""
        return self.digest.removeprefix("sha256:")[:12]


ProgressCallback = Callable[[ProgressEvent], None]


def ignore_progress(event: ProgressEvent) -> None:
    """A progress callback that drops every event."""


class Throttle:
    """Lets byte-count events through at most every `interval` seconds (and the last)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.last = 0.0

    def ready(self, final: bool = False) -> bool:
        """Whether an event should be emitted now."""
        now = time.monotonic()
        if final or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class QueuedProgress:
    """A progress callback that queues events for a stream to send, passing byte counts
    of one blob (statuses in `byte_statuses`) at most every `interval` seconds, and the
    last one of a blob always."""

    def __init__(self, interval: float, byte_statuses: Collection[Status]) -> None:
        self.queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self._interval = interval
        self._byte_statuses = byte_statuses
        self._last: dict[str, tuple[Status, float]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        last = self._last.get(event.digest)
        if (
            last is not None
            and event.status in self._byte_statuses
            and last[0] == event.status
            and now - last[1] < self._interval
            and not (event.total and event.current >= event.total)
        ):
            return
        self._last[event.digest] = (event.status, now)
        self.queue.put_nowait(event)
