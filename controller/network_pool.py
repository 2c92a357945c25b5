"""Which subnet and VXLAN VNI a new cluster network gets.

Overlay networks take their subnets from their own pool (``--network-pool``, cut into
``--network-size`` blocks), as Docker's ``default-addr-pool`` does. A block is free when
it overlaps no other network, no node's bridge subnet, the node subnet pool itself
(nodes that register later take blocks from it) and covers no address the cluster talks
to (a controller's, a node's host address): a container's route to its network would
capture that address. A subnet the user asks for (``--subnet``) must pass the same
checks. VNIs count up from 4096, as Docker's overlay driver does, skipping used ones.

Everything here is pure: the registry (``controller/networks.py``) reads what is taken
and writes the choice in one transaction that fails if any network changed meanwhile.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.common.validation import ValidationError, check_subnet
from dockyard.controller.subnets import Protected, check_pool, first_covered

__all__ = [
    "DEFAULT_NETWORK_POOL",
    "DEFAULT_NETWORK_SIZE",
    "FIRST_VNI",
    "LAST_VNI",
    "NetworkPool",
    "PoolExhausted",
    "Taken",
]

DEFAULT_NETWORK_POOL = "10.112.0.0/12"
"""10.112.0.0-10.127.255.255: not the node pool (10.87/16), Podman's 10.88/10.89,
Kubernetes' usual 10.96/12 services or 10.244/16 pods, nor deploy/local-cluster's 10.210."""
DEFAULT_NETWORK_SIZE = 24
FIRST_VNI = 4096
LAST_VNI = 2**24 - 1

Taken = tuple[str, ipaddress.IPv4Network]
"""Who holds a range (``"network web"``, ``"node 1a2b3c"``, ``"the node subnet pool"``)."""


class PoolExhausted(Exception):
    """No free block (or VNI) is left; the message names the pool."""


@dataclass(frozen=True)
class NetworkPool:
    """The controller's pool of network subnets.

    Raises:
        ValueError: the pool or the block size is not usable (naming which).
    """

    pool: str = DEFAULT_NETWORK_POOL
    size: int = DEFAULT_NETWORK_SIZE

    def __post_init__(self) -> None:
        check_pool(self.pool, self.size, "--network-pool", "--network-size")

    def allocate(
        self, taken: Iterable[Taken], protected: Iterable[Protected] = ()
    ) -> ipaddress.IPv4Network:
        """The first free block of the pool.

        Raises:
            PoolExhausted: every block overlaps something taken or covers a protected
                address.
        """
        held, guarded = list(taken), list(protected)
        for block in ipaddress.IPv4Network(self.pool).subnets(new_prefix=self.size):
            if _holder(block, held) is None and first_covered(block, guarded) is None:
                return block
        raise PoolExhausted(
            f"no free /{self.size} left in the network pool {self.pool} "
            f"({len(held)} ranges taken): remove unused networks, give --subnet, or "
            "start the controller with a larger --network-pool"
        )


def check_requested(
    field: str, text: str, taken: Iterable[Taken], protected: Iterable[Protected] = ()
) -> ipaddress.IPv4Network:
    """A subnet the user asked for, refused when it overlaps what is taken.

    Raises:
        ValidationError: not a usable subnet, or it overlaps/covers something (named).
    """
    try:
        network = check_subnet(text)
    except ValueError as exc:
        raise ValidationError(field, str(exc)) from None
    if network.prefixlen > 29:
        raise ValidationError(field, f"{text} is too small: at most /29")
    holder = _holder(network, list(taken))
    if holder is not None:
        raise ValidationError(field, f"{text} overlaps {holder[0]} ({holder[1]})")
    covered = first_covered(network, list(protected))
    if covered is not None:
        raise ValidationError(field, f"{text} covers the address {covered[1]} of {covered[0]}")
    return network


def next_vni(used: Iterable[int]) -> int:
    """The lowest VNI from FIRST_VNI that is not used.

    Raises:
        PoolExhausted: all 16 million are (never in practice; named anyway).
    """
    held = set(used)
    vni = FIRST_VNI
    while vni in held:
        vni += 1
    if vni > LAST_VNI:
        raise PoolExhausted(f"no free VXLAN VNI left in {FIRST_VNI}-{LAST_VNI}")
    return vni


def _holder(network: ipaddress.IPv4Network, taken: list[Taken]) -> Taken | None:
    return next((item for item in taken if item[1].overlaps(network)), None)
