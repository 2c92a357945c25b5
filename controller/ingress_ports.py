"""Cluster-wide uniqueness of the routing mesh's published ports, and their allocation.

A port published with `mode=ingress` is open on every node, so no other service may
publish it (in either mode), as Swarm's port allocator refuses. An ingress port with no
published port gets one here, as Swarm's: the lowest free one of 30000-32767 (or the one
the service had for that target). The write compares that no service changed since the
list the check read, so two controllers cannot both hand out one port; the port lives
in the spec, so removing the service or the port releases it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.records import SERVICES
from dockyard.controller.store import Op, Store
from dockyard.v1.workloads_pb2 import PortConfig, Service, ServiceSpec

__all__ = [
    "AUTO_PORTS",
    "allocate_ingress_ports",
    "check_ingress_ports",
    "ingress_conflict",
]

AUTO_PORTS = range(30000, 32768)
"""Swarm's dynamic range for ingress ports given with no published port."""

PortKey = tuple[int, str]


def _key(port: PortConfig) -> PortKey:
    return port.published_port, (port.protocol or "tcp").lower()


def _published(spec: ServiceSpec) -> dict[PortKey, str]:
    """The published ports of `spec` -> their mode ("" counts as host)."""
    return {
        _key(port): port.publish_mode or "host" for port in spec.task.ports if port.published_port
    }


def _wants_port(port: PortConfig) -> bool:
    return port.publish_mode == "ingress" and not port.published_port


def allocate_ingress_ports(
    spec: ServiceSpec,
    service_id: str,
    services: Sequence[Service],
    pool: range = AUTO_PORTS,
) -> ServiceSpec:
    """`spec` with a published port for each ingress port that has none: the port the
    service (`service_id`, "" when new) had for that target and protocol, else the lowest
    one of `pool` that no other service publishes.

    Raises:
        FailedPrecondition: every port of the pool is published (naming the port).
    """
    if not any(_wants_port(port) for port in spec.task.ports):
        return spec
    taken = {key for other in services if other.id != service_id for key in _published(other.spec)}
    taken |= set(_published(spec))
    had = {
        (p.target_port, (p.protocol or "tcp").lower()): p.published_port
        for s in services
        if s.id == service_id
        for p in s.spec.task.ports
        if p.publish_mode == "ingress" and p.published_port in pool
    }
    out = ServiceSpec()
    out.CopyFrom(spec)
    for port in out.task.ports:
        if not _wants_port(port):
            continue
        protocol = (port.protocol or "tcp").lower()
        previous = had.get((port.target_port, protocol), 0)
        if previous and (previous, protocol) not in taken:
            port.published_port = previous
        else:
            port.published_port = next((n for n in pool if (n, protocol) not in taken), 0)
        if not port.published_port:
            raise FailedPrecondition(
                f"spec.task.ports: no free port in {pool.start}-{pool.stop - 1} for target "
                f"port {port.target_port}/{protocol} (every one is published): give a "
                "published port, or remove a service that holds one"
            )
        taken.add((port.published_port, protocol))
    return out


def ingress_conflict(spec: ServiceSpec, service_id: str, services: Sequence[Service]) -> str | None:
    """Why `spec` (of service `service_id`, "" when new) cannot have its ports, or None."""
    mine = _published(spec)
    if not mine:
        return None
    for other in services:
        if other.id == service_id:
            continue
        theirs = _published(other.spec)
        for key, mode in mine.items():
            their_mode = theirs.get(key)
            if their_mode is None or (mode == "host" and their_mode == "host"):
                continue
            port, protocol = key
            return (
                f"spec.task.ports: port {port}/{protocol} is already published by service "
                f"{other.spec.name} ({their_mode} mode); an ingress port is open on every "
                "node, so it is unique in the cluster"
            )
    return None


async def check_ingress_ports(
    store: Store, spec: ServiceSpec, service_id: str = ""
) -> tuple[ServiceSpec, list[Op]]:
    """`spec` with its ingress ports allocated, and the compare that keeps the answer
    true. Raise FailedPrecondition on a clash or when no port is free."""
    if not any(port.published_port or _wants_port(port) for port in spec.task.ports):
        return spec, []
    services, revision = await store.list_all(SERVICES)
    spec = allocate_ingress_ports(spec, service_id, services)
    why = ingress_conflict(spec, service_id, services)
    if why is not None:
        raise FailedPrecondition(why)
    # Only a spec taking an ingress port fences the write: host ports never clash with
    # each other, and a host port raced by a new ingress one is that write's to refuse.
    if any(port.publish_mode == "ingress" for port in spec.task.ports):
        return spec, [store.unchanged_op(SERVICES, revision)]
    return spec, []
