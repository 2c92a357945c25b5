"""The node's own metric families: what the runtime costs (the conmon monitors of this
agent's containers) and how big its image store is. The agent process itself is
prometheus_client's ProcessCollector (`dockyard_agent_process_*`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["ConmonCollector", "DnsCollector", "StoreSizeCollector", "tree_bytes"]


class ConmonCollector:
    """`dockyard_conmon_*`: the conmon processes whose runc root is this agent's (their
    command line names it), summed: a monitor per container is the runtime's cost."""

    def __init__(self, runc_root: Path) -> None:
        self._marker = str(runc_root)

    def _conmons(self) -> Iterable[psutil.Process]:
        for process in psutil.process_iter(["name", "cmdline"]):
            info = process.info
            if info.get("name") == "conmon" and self._marker in (info.get("cmdline") or ()):
                yield process

    def collect(self) -> list[Metric]:
        count, rss, cpu = 0, 0, 0.0
        for process in self._conmons():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
                    cpu += times.user + times.system
                count += 1
            except psutil.Error:  # it exited meanwhile
                continue
        return [
            GaugeMetricFamily(
                "dockyard_conmon_processes",
                "conmon monitors of this agent's containers.",
                value=count,
            ),
            GaugeMetricFamily(
                "dockyard_conmon_resident_memory_bytes",
                "Resident memory of those monitors, summed, in bytes.",
                value=rss,
            ),
            CounterMetricFamily(
                "dockyard_conmon_cpu_seconds_total",
                "CPU time of the running monitors, summed, in seconds.",
                value=cpu,
            ),
        ]


def tree_bytes(root: Path) -> int:
    """Disk space of the files under `root` (allocated blocks, each inode once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


class StoreSizeCollector:
    """`dockyard_image_store_bytes{part}`: disk used by the image store's blobs and
    snapshots. Walking a big store costs, so a size is measured at most every `ttl`
    seconds; the age of the figure is `dockyard_image_store_measured_seconds`."""

    def __init__(
        self, parts: dict[str, Path], ttl: float = 60.0, measure: Callable[[Path], int] = tree_bytes
    ) -> None:
        self._parts = parts
        self._ttl = ttl
        self._measure = measure
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()

    def _sizes(self) -> tuple[float, dict[str, int]]:
        with self._lock:
            now = time.time()
            if self._cached is None or now - self._cached[0] >= self._ttl:
                self._cached = (
                    now,
                    {part: self._measure(path) for part, path in self._parts.items()},
                )
            return self._cached

    def collect(self) -> list[Metric]:
        measured, sizes = self._sizes()
        size = GaugeMetricFamily(
            "dockyard_image_store_bytes", "Disk used by the image store, by part.", labels=["part"]
        )
        for part, value in sorted(sizes.items()):
            size.add_metric([part], value)
        when = GaugeMetricFamily(
            "dockyard_image_store_measured_seconds",
            "When the store size was last measured, Unix seconds.",
            value=measured,
        )
        return [size, when]


class DnsCollector:
    """`dockyard_dns_queries_total{outcome}`: queries the node's DNS server answered for
    its containers (`service`: a cluster name, `forwarded`, `failed`, `refused`)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> list[Metric]:
        queries = CounterMetricFamily(
            "dockyard_dns_queries_total",
            "DNS queries of the node's containers, by outcome.",
            labels=["outcome"],
        )
        for outcome, count in sorted(self._counts().items()):
            queries.add_metric([outcome], count)
        return [queries]
