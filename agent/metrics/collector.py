"""Per-container metric families, read from cgroups and `/proc` at scrape time.

Names follow cAdvisor's (what the kubelet serves at `/metrics/cadvisor`), so dashboards
and alerts written for it read these: `container_cpu_usage_seconds_total`,
`container_memory_working_set_bytes`, `container_spec_memory_limit_bytes`,
`container_oom_events_total`, `container_threads`, `container_network_*_total`. What
cAdvisor has no name for is `dockyard_container_*`. Series per container are bounded
(see docs/metrics.md): a fixed label set, at most `max_containers` containers (running
ones first), at most `netdev.MAX_INTERFACES` interfaces each."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dockyard.agent.metrics.cgroups import CgroupReader, CgroupSample
from dockyard.agent.metrics.netdev import InterfaceCounters, read_net_dev
from dockyard.agent.metrics.source import ContainerRef

__all__ = [
    "CONTAINER_LABELS",
    "DEFAULT_MAX_CONTAINERS",
    "ContainerCollector",
    "OomTracker",
    "task_labels",
]

CONTAINER_LABELS = ("id", "name", "image", "service", "task", "slot", "node")
DEFAULT_MAX_CONTAINERS = 1000
_TASK_LABELS = {  # container label -> metric label (set by the agent for service tasks)
    "dockyard.service.name": "service",
    "dockyard.task.id": "task",
    "dockyard.slot": "slot",
}
_MAX_VALUE = 256
"""Longest label value; longer ones (an image reference, at most) are cut."""


def task_labels(ref: ContainerRef, node: str) -> list[str]:
    """The label values of `ref`, in CONTAINER_LABELS order ("" where it has none)."""
    values = {"id": ref.id, "name": ref.name, "image": ref.image, "node": node}
    for key, label in _TASK_LABELS.items():
        values[label] = ref.labels.get(key, "")
    return [values.get(label, "")[:_MAX_VALUE] for label in CONTAINER_LABELS]


@dataclass(slots=True)
class _OomRecord:
    started_at: float
    last: int
    earlier: int


class OomTracker:
    """`container_oom_events_total`, kept monotonic over a container's restarts.

    A container's cgroup counts its OOM kills while it exists; when the kill ends the
    container, runc deletes the cgroup, and what is left is the exit's `oom_killed` flag.
    So a container's count is what its earlier runs (told apart by their start time)
    ended with, plus the current run's. A kill that ends a run and is followed by a
    restart before the next scrape saw the exit is counted only if the cgroup showed it.
    """

    def __init__(self) -> None:
        self._seen: dict[str, _OomRecord] = {}
        self._lock = threading.Lock()

    def count(self, ref: ContainerRef, cgroup_kills: int) -> int:
        current = max(cgroup_kills, 1 if ref.oom_killed and not ref.running else 0)
        with self._lock:
            record = self._seen.get(ref.id)
            if record is None:
                record = self._seen[ref.id] = _OomRecord(ref.started_at, current, 0)
            elif record.started_at != ref.started_at:
                record.earlier += record.last
                record.started_at, record.last = ref.started_at, current
            else:
                record.last = max(record.last, current)
            return record.earlier + record.last

    def keep_only(self, ids: Iterable[str]) -> None:
        """Forget containers that are gone (their series end with them)."""
        keep = set(ids)
        with self._lock:
            for gone in set(self._seen) - keep:
                del self._seen[gone]


class _Families:
    """The families of one scrape, each created once, filled per container."""

    def __init__(self) -> None:
        labels = list(CONTAINER_LABELS)
        net = [*labels, "interface"]
        c, g = CounterMetricFamily, GaugeMetricFamily
        self.cpu = c(
            "container_cpu_usage_seconds_total",
            "Cumulative CPU time consumed, in seconds.",
            labels=labels,
        )
        self.cpu_user = c(
            "container_cpu_user_seconds_total",
            "Cumulative user CPU time consumed, in seconds.",
            labels=labels,
        )
        self.cpu_system = c(
            "container_cpu_system_seconds_total",
            "Cumulative system CPU time consumed, in seconds.",
            labels=labels,
        )
        self.usage = g(
            "container_memory_usage_bytes",
            "Current memory usage, page cache included, in bytes.",
            labels=labels,
        )
        self.working_set = g(
            "container_memory_working_set_bytes",
            "Current working set (usage less inactive file cache), in bytes.",
            labels=labels,
        )
        self.rss = g("container_memory_rss", "Anonymous memory (RSS), in bytes.", labels=labels)
        self.cache = g("container_memory_cache", "Page cache memory, in bytes.", labels=labels)
        self.limit = g(
            "container_spec_memory_limit_bytes", "Memory limit, in bytes (0: none).", labels=labels
        )
        self.oom = c(
            "container_oom_events_total",
            "OOM kills in the container (over its restarts, while this agent ran).",
            labels=labels,
        )
        self.threads = g(
            "container_threads", "Tasks (threads) in the container's cgroup.", labels=labels
        )
        self.threads_max = g(
            "container_threads_max", "Limit on the container's tasks (0: none).", labels=labels
        )
        self.rx_bytes = c("container_network_receive_bytes_total", "Bytes received.", labels=net)
        self.tx_bytes = c("container_network_transmit_bytes_total", "Bytes sent.", labels=net)
        self.rx_packets = c(
            "container_network_receive_packets_total", "Packets received.", labels=net
        )
        self.tx_packets = c("container_network_transmit_packets_total", "Packets sent.", labels=net)
        self.rx_errors = c("container_network_receive_errors_total", "Receive errors.", labels=net)
        self.tx_errors = c(
            "container_network_transmit_errors_total", "Transmit errors.", labels=net
        )
        self.rx_dropped = c(
            "container_network_receive_packets_dropped_total",
            "Received packets dropped.",
            labels=net,
        )
        self.tx_dropped = c(
            "container_network_transmit_packets_dropped_total", "Sent packets dropped.", labels=net
        )
        self.start_time = g(
            "container_start_time_seconds",
            "When the container last started, Unix seconds.",
            labels=labels,
        )
        self.restarts = c(
            "dockyard_container_restarts_total",
            "Times the container was started again after it exited.",
            labels=labels,
        )
        self.running = g(
            "dockyard_container_running", "1 while the container runs, else 0.", labels=labels
        )

    def add_cgroup(self, values: list[str], s: CgroupSample) -> None:
        self.cpu.add_metric(values, s.cpu_usage_seconds)
        self.cpu_user.add_metric(values, s.cpu_user_seconds)
        self.cpu_system.add_metric(values, s.cpu_system_seconds)
        self.usage.add_metric(values, s.memory_usage_bytes)
        self.working_set.add_metric(values, s.memory_working_set_bytes)
        self.rss.add_metric(values, s.memory_rss_bytes)
        self.cache.add_metric(values, s.memory_cache_bytes)
        self.limit.add_metric(values, s.memory_limit_bytes)
        self.threads.add_metric(values, s.threads)
        self.threads_max.add_metric(values, s.threads_max)

    def add_interface(self, values: list[str], i: InterfaceCounters) -> None:
        labelled = [*values, i.interface]
        for family, value in (
            (self.rx_bytes, i.receive_bytes),
            (self.tx_bytes, i.transmit_bytes),
            (self.rx_packets, i.receive_packets),
            (self.tx_packets, i.transmit_packets),
            (self.rx_errors, i.receive_errors),
            (self.tx_errors, i.transmit_errors),
            (self.rx_dropped, i.receive_dropped),
            (self.tx_dropped, i.transmit_dropped),
        ):
            family.add_metric(labelled, value)

    def all(self) -> list[Metric]:
        return [value for value in vars(self).values() if isinstance(value, Metric)]


class ContainerCollector:
    """Reads every container of a scrape's list (blocking: run `collect` in a thread).

    Args:
        reader: The cgroup reader for this host (v1 or v2).
        node: The node name, put in every series' `node` label.
        max_containers: Containers reported per scrape at most (running ones first, then
            the most recently started); the number left out is
            `dockyard_metrics_containers_dropped`.
        net_dev: Reads a PID's network counters (`/proc/<pid>/net/dev`).
    """

    def __init__(
        self,
        reader: CgroupReader,
        node: str,
        max_containers: int = DEFAULT_MAX_CONTAINERS,
        net_dev: Callable[[int], list[InterfaceCounters]] = read_net_dev,
    ) -> None:
        if max_containers < 1:
            raise ValueError(f"max_containers {max_containers}: expected at least 1")
        self.reader = reader
        self.node = node
        self.max_containers = max_containers
        self._net_dev = net_dev
        self._oom = OomTracker()

    def collect(self, refs: Sequence[ContainerRef]) -> list[Metric]:
        """The container families for `refs`, and how many containers were counted."""
        chosen = sorted(refs, key=lambda r: (not r.running, -r.started_at, r.id))
        chosen = chosen[: self.max_containers]
        self._oom.keep_only(r.id for r in refs)
        families = _Families()
        for ref in chosen:
            values = task_labels(ref, self.node)
            sample = self.reader.read(ref.cgroups_path) if ref.running else None
            if sample is not None:
                families.add_cgroup(values, sample)
            if ref.running and ref.pid > 0 and not ref.host_network:
                for interface in self._net_dev(ref.pid):
                    families.add_interface(values, interface)
            families.oom.add_metric(values, self._oom.count(ref, sample.oom_kills if sample else 0))
            families.restarts.add_metric(values, ref.restarts)
            families.running.add_metric(values, 1 if ref.running else 0)
            if ref.started_at:
                families.start_time.add_metric(values, ref.started_at)
        counted = GaugeMetricFamily(
            "dockyard_metrics_containers",
            "Containers on this node, by whether this scrape reports "
            "them (the rest are over the limit).",
            labels=["reported"],
        )
        counted.add_metric(["true"], len(chosen))
        counted.add_metric(["false"], len(refs) - len(chosen))
        return [*families.all(), counted]
