"""Addresses on cluster networks: each task's, and each service's virtual IP.

A network's first address is its gateway (kept free, as Docker keeps it); tasks take
addresses from the bottom up, virtual IPs from the top down, so the two writers (the
leader creating tasks, any controller writing a service spec) meet only when a network
is nearly full, and each also skips what the other already holds. Standalone
containers on attachable networks (controller/attachments.py) take theirs from the top
down too, comparing every service as VIPs are written (and VIPs compare them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from dockyard.v1.networks_pb2 import Network, NetworkAttachmentRecord
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = ["AddressExhausted", "live", "next_task_address", "next_vip", "used_addresses"]

_ENDED = frozenset(
    {
        TaskStatus.COMPLETE,
        TaskStatus.SHUTDOWN,
        TaskStatus.FAILED,
        TaskStatus.REJECTED,
        TaskStatus.ORPHANED,
    }
)


class AddressExhausted(Exception):
    """No address left on a network; the message names it."""


def live(task: Task) -> bool:
    """The task still holds its addresses (it has not ended)."""
    return task.status.state not in _ENDED


def used_addresses(
    services: Iterable[Service],
    tasks: Iterable[Task],
    attachments: Iterable[NetworkAttachmentRecord] = (),
) -> dict[str, set[str]]:
    """Network ID -> every address held there: VIPs (spec and previous spec), the
    addresses of tasks that have not ended and those of standalone containers."""
    used: dict[str, set[str]] = {}
    for service in services:
        for spec in (service.spec, service.previous_spec):
            for attachment in spec.task.networks:
                if attachment.vip:
                    used.setdefault(attachment.network_id, set()).add(attachment.vip)
    for task in tasks:
        if live(task):
            for held in task.networks:
                used.setdefault(held.network_id, set()).add(held.address)
    for attached in attachments:
        used.setdefault(attached.network_id, set()).add(attached.address)
    return used


def next_task_address(network: Network, used: set[str]) -> str:
    """The lowest free address after the gateway; added to ``used``."""
    return _take(network, used, iter(ipaddress.IPv4Network(network.subnet).hosts()))


def next_vip(network: Network, used: set[str]) -> str:
    """The highest free address; added to ``used``."""
    return _take(network, used, reversed(list(ipaddress.IPv4Network(network.subnet).hosts())))


def _take(network: Network, used: set[str], candidates: Iterator[ipaddress.IPv4Address]) -> str:
    for candidate in candidates:
        text = str(candidate)
        if text != network.gateway and text not in used:
            used.add(text)
            return text
    raise AddressExhausted(
        f"network {network.spec.name} ({network.subnet}) has no free address left: "
        "scale down, or use a network with a larger --subnet"
    )
