"""Scheduling filters: small objects that each rule out nodes for one reason.

Each filter follows swarmkit's `filter.go`: `set_task(task)` says whether it
applies to the task (and remembers what it needs), `check(info)` says whether a
node passes, and `explain(n)` words why `n` nodes failed, using the task's own
numbers ("insufficient memory (needs 2.0 GiB) on 2 nodes").
"""

from __future__ import annotations

from typing import Protocol

from dockyard.v1.workloads_pb2 import Task

from .constraints import Constraint, parse_constraints
from .nodeinfo import Amount, HostPort, NodeInfo, task_host_ports, task_reservation

__all__ = [
    "AvailabilityFilter",
    "ConstraintFilter",
    "Filter",
    "HostPortFilter",
    "MaxReplicasFilter",
    "ReadyFilter",
    "ResourceFilter",
    "default_filters",
    "format_bytes",
    "format_cpus",
    "nodes",
]


class Filter(Protocol):
    """One reason a node may not take a task."""

    def set_task(self, task: Task) -> bool:
        """Prepare for `task`; False when this filter does not apply to it."""
        ...

    def check(self, info: NodeInfo) -> bool:
        """Whether the node passes."""
        ...

    def explain(self, n_nodes: int) -> str:
        """Why `n_nodes` nodes failed, e.g. '2 nodes are not ready'."""
        ...


def nodes(n: int) -> str:
    """'1 node', '3 nodes'."""
    return f"{n} node" if n == 1 else f"{n} nodes"


def format_bytes(size: int) -> str:
    """2147483648 -> '2.0 GiB' (binary units, as docker prints memory)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_cpus(nano_cpus: int) -> str:
    """1500000000 -> '1.5 CPUs'."""
    cpus = nano_cpus / 1e9
    return f"{cpus:g} CPU" if cpus == 1 else f"{cpus:g} CPUs"


class ReadyFilter:
    """The node has a live session with on-time heartbeats."""

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return info.ready

    def explain(self, n_nodes: int) -> str:
        return f"{nodes(n_nodes)} {'is' if n_nodes == 1 else 'are'} not ready"


class AvailabilityFilter:
    """The operator lets the node take new tasks (ACTIVE; not PAUSE or DRAIN)."""

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return info.active

    def explain(self, n_nodes: int) -> str:
        verb = "is" if n_nodes == 1 else "are"
        return f"{nodes(n_nodes)} {verb} not active (paused or drained)"


class ResourceFilter:
    """The task's CPU and memory reservations fit what the node has left."""

    def __init__(self) -> None:
        self._needs = Amount()

    def set_task(self, task: Task) -> bool:
        self._needs = task_reservation(task)
        return bool(self._needs)

    def check(self, info: NodeInfo) -> bool:
        return self._needs.fits_in(info.free)

    def explain(self, n_nodes: int) -> str:
        needs = self._needs
        if needs.nano_cpus and needs.memory_bytes:
            what = (
                f"CPU or memory (needs {format_cpus(needs.nano_cpus)}, "
                f"{format_bytes(needs.memory_bytes)})"
            )
        elif needs.memory_bytes:
            what = f"memory (needs {format_bytes(needs.memory_bytes)})"
        else:
            what = f"CPU (needs {format_cpus(needs.nano_cpus)})"
        return f"insufficient {what} on {nodes(n_nodes)}"


class ConstraintFilter:
    """The node satisfies every placement constraint of the task.

    A malformed constraint makes `set_task` raise ConstraintError: the API should
    have refused it, and the scheduler turns it into the task's pending reason.
    """

    def __init__(self) -> None:
        self._constraints: list[Constraint] = []

    def set_task(self, task: Task) -> bool:
        self._constraints = parse_constraints(task.spec.placement.constraints)
        return bool(self._constraints)

    def check(self, info: NodeInfo) -> bool:
        node = info.node
        return all(constraint.matches(node) for constraint in self._constraints)

    def explain(self, n_nodes: int) -> str:
        texts = ", ".join(constraint.text for constraint in self._constraints)
        verb = "fails" if n_nodes == 1 else "fail"
        if len(self._constraints) == 1:
            return f"{nodes(n_nodes)} {verb} {texts}"
        return f"{nodes(n_nodes)} {verb} the constraints {texts}"


class HostPortFilter:
    """None of the ports the task publishes on the host is taken on the node. Ingress
    ports count only on a node that does not mesh them (`NodeInfo.meshed`)."""

    def __init__(self) -> None:
        self._ports: list[HostPort] = []
        self._meshed: list[HostPort] = []

    def set_task(self, task: Task) -> bool:
        self._ports = task_host_ports(task)
        self._meshed = task_host_ports(task, meshed=True)
        return bool(self._ports)

    def check(self, info: NodeInfo) -> bool:
        used = info.host_ports
        return not any(port in used for port in (self._meshed if info.meshed else self._ports))

    def explain(self, n_nodes: int) -> str:
        ports = ", ".join(f"{port}/{protocol}" for protocol, port in self._ports)
        word = "port" if len(self._ports) == 1 else "ports"
        return f"host {word} {ports} in use on {nodes(n_nodes)}"


class MaxReplicasFilter:
    """The node has fewer than `max_replicas_per_node` tasks of the task's service."""

    def __init__(self) -> None:
        self._service = ""
        self._limit = 0

    def set_task(self, task: Task) -> bool:
        self._service = task.service_id
        self._limit = task.spec.placement.max_replicas_per_node
        return self._limit > 0

    def check(self, info: NodeInfo) -> bool:
        return info.tasks_of(self._service) < self._limit

    def explain(self, n_nodes: int) -> str:
        return f"max replicas per node ({self._limit}) reached on {nodes(n_nodes)}"


def default_filters() -> list[Filter]:
    """The filters in the order they run (swarmkit's): node state, resources, constraints."""
    return [
        ReadyFilter(),
        AvailabilityFilter(),
        ResourceFilter(),
        ConstraintFilter(),
        HostPortFilter(),
        MaxReplicasFilter(),
    ]
