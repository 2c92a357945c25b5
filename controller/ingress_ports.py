"""Cluster-wide uniqueness of the routing mesh's published ports.

A port published with `mode=ingress` is open on every node, so no other service may
publish it (in either mode), as Swarm's port allocator refuses. The write compares that
no service changed since the list the check read, so two controllers cannot both hand
out one port.
"""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.records import SERVICES
from dockyard.controller.store import Op, Store
from dockyard.v1.workloads_pb2 import PortConfig, Service, ServiceSpec

__all__ = ["check_ingress_ports", "ingress_conflict"]

PortKey = tuple[int, str]


def _key(port: PortConfig) -> PortKey:
    return port.published_port, (port.protocol or "tcp").lower()


def _published(spec: ServiceSpec) -> dict[PortKey, str]:
    """The published ports of `spec` -> their mode ("" counts as host)."""
    return {
        _key(port): port.publish_mode or "host" for port in spec.task.ports if port.published_port
    }


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


async def check_ingress_ports(store: Store, spec: ServiceSpec, service_id: str = "") -> list[Op]:
    """Raise FailedPrecondition on a clash; the compare that keeps the answer true."""
    if not any(port.published_port for port in spec.task.ports):
        return []
    services, revision = await store.list_all(SERVICES)
    why = ingress_conflict(spec, service_id, services)
    if why is not None:
        raise FailedPrecondition(why)
    # Only a spec taking an ingress port fences the write: host ports never clash with
    # each other, and a host port raced by a new ingress one is that write's to refuse.
    if any(port.publish_mode == "ingress" for port in spec.task.ports):
        return [store.unchanged_op(SERVICES, revision)]
    return []
