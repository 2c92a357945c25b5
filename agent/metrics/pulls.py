"""`dockyard_image_pull_*`: what image pulls fetched, by source (another node's agent, or
the registry). The image service tells `observe` of every blob it stored."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter
from prometheus_client.core import Metric

__all__ = ["SOURCES", "PullMetrics"]

SOURCES = ("peer", "registry")


class PullMetrics:
    """Counters of pulled blobs, bytes and seconds by source (a collector itself)."""

    def __init__(self) -> None:
        self._blobs = Counter(
            "dockyard_image_pull_blobs", "Blobs pulled, by source.", ["source"], registry=None
        )
        self._bytes = Counter(
            "dockyard_image_pull_bytes",
            "Bytes of blobs pulled, by source.",
            ["source"],
            registry=None,
        )
        self._seconds = Counter(
            "dockyard_image_pull_seconds",
            "Seconds spent fetching blobs, by source.",
            ["source"],
            registry=None,
        )
        for source in SOURCES:  # both series exist from the start, at 0
            for counter in (self._blobs, self._bytes, self._seconds):
                counter.labels(source)

    def observe(self, source: str, size: int, seconds: float) -> None:
        """One blob stored from `source` (`peer` or `registry`)."""
        if source not in SOURCES:
            raise ValueError(f"pull source {source!r}: expected one of {', '.join(SOURCES)}")
        self._blobs.labels(source).inc()
        self._bytes.labels(source).inc(size)
        self._seconds.labels(source).inc(max(0.0, seconds))

    def collect(self) -> Iterable[Metric]:
        for counter in (self._blobs, self._bytes, self._seconds):
            yield from counter.collect()
