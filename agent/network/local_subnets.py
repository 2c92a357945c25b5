"""Subnets for a node's user-defined networks (``docker network create``): one /24 each
from a pool of their own, never overlapping the node's bridge, the overlays, each other,
or a route of the host (the LAN, another agent's bridge).

The host's routes are read over netlink (pyroute2), never by parsing ``ip`` output.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Network

from pyroute2 import IPRoute

__all__ = ["LOCAL_POOL", "LOCAL_PREFIX", "SubnetError", "choose_subnet", "host_routes"]

LOCAL_POOL = "10.77.0.0/16"
"""Not the node subnet pool (10.87.0.0/16), the overlay pool (10.112.0.0/12), Podman's,
Docker's 172.17.0.0/16 or the usual Kubernetes ranges."""
LOCAL_PREFIX = 24


class SubnetError(ValueError):
    """No subnet can be used: the message names what it overlaps or what is full."""


def host_routes() -> list[tuple[IPv4Network, str]]:
    """The IPv4 destinations of the main routing table (but the default route), each with
    its interface name. Blocking: call it in a thread."""
    found: list[tuple[IPv4Network, str]] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue
            network = IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            found.append((network, str(names.get(route.get_attr("RTA_OIF"), ""))))
    return found


def choose_subnet(
    requested: str,
    taken: Iterable[tuple[str, str]],
    pool: str = LOCAL_POOL,
    prefix: int = LOCAL_PREFIX,
) -> str:
    """``requested`` when it overlaps nothing, else (``""``) the pool's first free block.

    Args:
        requested: A subnet the client asked for (``IPAM.Config[0].Subnet``), or ``""``.
        taken: ``(subnet, what it is)`` pairs that may not be overlapped.

    Raises:
        SubnetError: ``requested`` is no IPv4 subnet or overlaps one of ``taken`` (both
            named), or the pool has no free block.
    """
    used = [(IPv4Network(subnet, strict=False), what) for subnet, what in taken]
    if requested:
        try:
            wanted = IPv4Network(requested)
        except ValueError as exc:
            raise SubnetError(f"IPAM.Config.Subnet {requested!r}: {exc}") from None
        if wanted.prefixlen > 30:
            raise SubnetError(f"IPAM.Config.Subnet {requested}: at most a /30")
        for network, what in used:
            if wanted.overlaps(network):
                raise SubnetError(f"IPAM.Config.Subnet {requested} overlaps {what} ({network})")
        return str(wanted)
    for block in ipaddress.IPv4Network(pool).subnets(new_prefix=prefix):
        if not any(block.overlaps(network) for network, _ in used):
            return str(block)
    raise SubnetError(f"no free /{prefix} left in the user-defined network pool {pool}")
