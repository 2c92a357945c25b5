"""NodeInfo: the scheduler's own record of a node and what is placed on it.

It mirrors swarmkit's `nodeinfo.go`: the Node, its tasks by id, the sum of their
reservations, the host ports they publish and how many tasks each service has
there. The controller builds these from its watch-fed cache; the scheduler copies
a NodeInfo before changing it, so the caller's records change only when it
adopts the result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus, TaskStatus
from dockyard.v1.workloads_pb2 import Task

__all__ = [
    "Amount",
    "Footprint",
    "NodeInfo",
    "holds_resources",
    "meshes_ingress",
    "task_host_ports",
    "task_reservation",
]

HostPort = tuple[str, int]  # (protocol, published port)


@dataclass(frozen=True, slots=True)
class Amount:
    """CPU (in nano CPUs, 1e9 = one CPU) and memory (bytes): a reservation or capacity."""

    nano_cpus: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.nano_cpus + other.nano_cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.nano_cpus - other.nano_cpus, self.memory_bytes - other.memory_bytes)

    def fits_in(self, other: Amount) -> bool:
        """Whether this amount fits inside `other` in both dimensions."""
        return self.nano_cpus <= other.nano_cpus and self.memory_bytes <= other.memory_bytes

    def __bool__(self) -> bool:
        return bool(self.nano_cpus or self.memory_bytes)


def task_reservation(task: Task) -> Amount:
    """What the scheduler sets aside on a node for `task`."""
    reservations = task.spec.resources.reservations
    return Amount(reservations.nano_cpus, reservations.memory_bytes)


def meshes_ingress(node: Node) -> bool:
    """Whether the node runs the routing mesh over the ingress overlay: its address (as
    the controller sees it) is not loopback. An agent on a loopback address shares its
    host (its overlays are bridges shared with the host's other agents, without the mesh:
    `agent/network/overlays.py`) and publishes an ingress port on the node of its task
    instead, as `mode=host`."""
    try:
        return not ipaddress.ip_address(node.network.address).is_loopback
    except ValueError:  # no address yet: as the agent, which publishes it on the node
        return False


def task_host_ports(task: Task, meshed: bool = False) -> list[HostPort]:
    """The (protocol, port) pairs `task` publishes on its node's host: its host-mode
    ports, and its ingress ports unless the node meshes them (`meshed`: they take no
    port of the node then, so several tasks publishing one may share a node)."""
    return [
        ((port.protocol or "tcp").lower(), port.published_port)
        for port in task.spec.ports
        if port.published_port and not (meshed and port.publish_mode == "ingress")
    ]


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a task takes from its node: its reservation, and the host ports it publishes
    on a node that does not mesh ingress and on one that does. Every task of one spec
    has the same, so a batch reads it once per group (from the group's first task)
    instead of from every task it places."""

    needs: Amount
    ports: tuple[HostPort, ...]
    meshed_ports: tuple[HostPort, ...]

    @classmethod
    def of(cls, task: Task) -> Footprint:
        return cls(
            task_reservation(task),
            tuple(task_host_ports(task)),
            tuple(task_host_ports(task, meshed=True)),
        )


_DONE = TaskStatus.RUNNING


def holds_resources(task: Task) -> bool:
    """A task holds its node's resources until the agent reports it stopped."""
    return task.status.state <= _DONE


@dataclass(eq=False, slots=True)
class NodeInfo:
    """What the scheduler knows of one node: the Node and the tasks placed on it.

    `total` is the node's capacity and `free` what its tasks' reservations leave;
    `ready` (READY status) and `active` (ACTIVE availability) are read from the
    Node when the record is made: a changed Node gets a new NodeInfo.
    """

    node: Node
    tasks: dict[str, Task] = field(default_factory=dict)
    reserved: Amount = Amount()
    host_ports: dict[HostPort, int] = field(default_factory=dict)
    service_tasks: dict[str, int] = field(default_factory=dict)
    images: frozenset[str] = frozenset()
    # Read from the Node once: the scheduler asks for them for every node and task.
    id: str = field(init=False)
    total: Amount = field(init=False)
    free: Amount = field(init=False)
    ready: bool = field(init=False)
    active: bool = field(init=False)
    meshed: bool = field(init=False)

    def __post_init__(self) -> None:
        node = self.node
        self.id = node.id
        resources = node.description.resources
        self.total = Amount(resources.nano_cpus, resources.memory_bytes)
        self.free = self.total - self.reserved
        self.ready = node.status.state == NodeStatus.READY
        self.active = node.spec.availability == NodeSpec.ACTIVE
        self.meshed = meshes_ingress(node)

    @classmethod
    def from_node(
        cls, node: Node, tasks: Iterable[Task] = (), images: Iterable[str] = ()
    ) -> NodeInfo:
        """Build the record of `node` from the tasks assigned to it.

        Tasks the agent reported as stopped (past RUNNING) hold nothing and are
        skipped. `images` are the image references the node already has, used as a
        tie-breaker by the image scorer.
        """
        info = cls(node=node, images=frozenset(images))
        for task in tasks:
            if holds_resources(task):
                info.add_task(task)
        return info

    def add_task(self, task: Task, footprint: Footprint | None = None) -> bool:
        """Account for `task` on this node; False (and no change) when already there.
        `footprint`: the task's, when the caller has it (else read from the task)."""
        if task.id in self.tasks:
            return False
        self.tasks[task.id] = task
        if footprint is None:
            needs = task_reservation(task)
            ports: Iterable[HostPort] = task_host_ports(task, self.meshed)
        else:
            needs = footprint.needs
            ports = footprint.meshed_ports if self.meshed else footprint.ports
        if needs:
            self.reserved = self.reserved + needs
            self.free = self.free - needs
        for port in ports:
            self.host_ports[port] = self.host_ports.get(port, 0) + 1
        service = task.service_id
        self.service_tasks[service] = self.service_tasks.get(service, 0) + 1
        return True

    def remove_task(self, task_id: str) -> bool:
        """Release a task's resources and ports; False when it is not on this node."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            return False
        needs = task_reservation(task)
        self.reserved = self.reserved - needs
        self.free = self.free + needs
        for port in task_host_ports(task, self.meshed):
            left = self.host_ports.get(port, 0) - 1
            if left > 0:
                self.host_ports[port] = left
            else:
                self.host_ports.pop(port, None)
        service = task.service_id
        left = self.service_tasks.get(service, 0) - 1
        if left > 0:
            self.service_tasks[service] = left
        else:
            self.service_tasks.pop(service, None)
        return True

    def with_node(self, node: Node) -> NodeInfo:
        """The record for a changed Node of the same node, keeping the tasks' sums (a
        node's heartbeat or status changing changes none of them); rebuilt from the
        tasks when the node's ingress meshing, which counts ports, changed."""
        if meshes_ingress(node) != self.meshed:
            return NodeInfo.from_node(node, self.tasks.values(), self.images)
        return NodeInfo(
            node=node,
            tasks=dict(self.tasks),
            reserved=self.reserved,
            host_ports=dict(self.host_ports),
            service_tasks=dict(self.service_tasks),
            images=self.images,
        )

    def tasks_of(self, service_id: str) -> int:
        """How many tasks of the service are on this node."""
        return self.service_tasks.get(service_id, 0)

    def copy(self) -> NodeInfo:
        """An independent copy (the Node and Task messages are shared, not copied).

        What the record reads from its Node is taken over, not read again: a batch
        copies every node it places on, and the ingress check parses an address."""
        clone = object.__new__(NodeInfo)
        clone.node, clone.images = self.node, self.images
        clone.tasks = dict(self.tasks)
        clone.reserved, clone.free, clone.total = self.reserved, self.free, self.total
        clone.host_ports = dict(self.host_ports)
        clone.service_tasks = dict(self.service_tasks)
        clone.id, clone.ready, clone.active = self.id, self.ready, self.active
        clone.meshed = self.meshed
        return clone
