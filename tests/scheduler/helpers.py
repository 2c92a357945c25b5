"""Builders for nodes and tasks in scheduler tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.controller.scheduler import NodeInfo
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import PortConfig, Task

GIB = 1024**3
CPU = 1_000_000_000


def make_node(
    node_id: str,
    *,
    cpus: float = 4,
    memory: int = 8 * GIB,
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    availability: NodeSpec.Availability.ValueType = NodeSpec.ACTIVE,
    hostname: str | None = None,
    name: str | None = None,
    os: str = "linux",
    arch: str = "amd64",
    address: str = "",
) -> Node:
    node = Node(id=node_id)
    node.spec.name = name if name is not None else f"name-{node_id}"
    node.spec.labels.update(labels or {})
    node.spec.availability = availability
    node.description.hostname = hostname if hostname is not None else f"host-{node_id}"
    node.description.platform.os = os
    node.description.platform.architecture = arch
    node.description.resources.nano_cpus = int(cpus * CPU)
    node.description.resources.memory_bytes = memory
    node.status.state = NodeStatus.READY if ready else NodeStatus.DOWN
    node.network.address = address  # not loopback: the node meshes ingress ports
    return node


def make_info(node_id: str, tasks: Iterable[Task] = (), **kwargs: object) -> NodeInfo:
    images = kwargs.pop("images", ())
    return NodeInfo.from_node(make_node(node_id, **kwargs), tasks, images)  # type: ignore[arg-type]


def make_task(
    task_id: str,
    service: str = "svc",
    *,
    cpus: float = 0,
    memory: int = 0,
    constraints: Iterable[str] = (),
    spread: Iterable[str] = (),
    max_replicas: int = 0,
    ports: Iterable[int] = (),
    image: str = "nginx:latest",
    mode: str = "",
) -> Task:
    task = Task(id=task_id, service_id=service, service_name=service)
    task.spec.container.image = image
    task.spec.resources.reservations.nano_cpus = int(cpus * CPU)
    task.spec.resources.reservations.memory_bytes = memory
    task.spec.placement.constraints.extend(constraints)
    for label in spread:
        task.spec.placement.preferences.add(spread=label)
    task.spec.placement.max_replicas_per_node = max_replicas
    task.spec.ports.extend(
        PortConfig(target_port=port, published_port=port, protocol="tcp", publish_mode=mode)
        for port in ports
    )
    return task


def make_tasks(n: int, service: str = "svc", prefix: str = "t", **kwargs: object) -> list[Task]:
    return [make_task(f"{prefix}{i}", service, **kwargs) for i in range(n)]  # type: ignore[arg-type]
