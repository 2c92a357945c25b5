"""Which bridge subnet each node's containers get on the cluster network.

Each node's bridge takes one subnet, and every other node routes that subnet to the
node's host address (``agent/network/routes.py``), as flannel's host-gw backend and
Kubernetes' node pod CIDRs do. A node that asks for nothing in particular gets the next
free block of the controller's pool (``--node-subnet-pool``, cut into
``--node-subnet-size`` blocks) and keeps it across restarts. A node whose subnet is
fixed (``--bridge-subnet``, or containers already hold addresses in it) keeps it, unless
it overlaps another node's: then it gets none, and a message that says with whom.

Every node routes every other node's subnet, so a subnet must never cover an address
the cluster itself talks to: a controller's, an etcd endpoint's or a node's host
address (a node that declared a subnet holding the controller's address would draw the
other agents' traffic to the controller). A fixed subnet that covers one is refused
(``CoversAddress``, naming whose address); the pool skips blocks that cover one.
Addresses given as names, not IPs, are not checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.common.validation import check_subnet
from dockyard.v1.types_pb2 import NodeDescription, NodeNetwork

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_SIZE",
    "CoversAddress",
    "Protected",
    "SubnetPool",
    "check_pool",
    "first_covered",
    "host_of_peer",
    "protected_address",
]

DEFAULT_POOL = "10.87.0.0/16"
"""The agents' own default bridge range: a node outside a cluster keeps using it whole."""
DEFAULT_SIZE = 24

Protected = tuple[str, ipaddress.IPv4Address]
"""Whose address (``"controller"``, ``"etcd endpoint"``, ``"node 1a2b..."``) and the address."""


class CoversAddress(ValueError):
    """A fixed subnet covers an address the cluster talks to."""


def protected_address(who: str, address: str) -> Protected | None:
    """``(who, IPv4 address)`` of ``host[:port]`` when the host is an IPv4 address that a
    route could capture (not loopback, not unspecified); None otherwise."""
    address = address.split("://", 1)[-1].split("/", 1)[0]  # an etcd URL's scheme, path
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    try:
        ip = ipaddress.IPv4Address(host.strip("[]"))
    except ValueError:
        return None
    return None if ip.is_loopback or ip.is_unspecified else (who, ip)


@dataclass(frozen=True)
class SubnetPool:
    """The controller's pool of node subnets.

    Raises:
        ValueError: the pool or the block size is not usable (naming which).
    """

    pool: str = DEFAULT_POOL
    size: int = DEFAULT_SIZE

    def __post_init__(self) -> None:
        check_pool(self.pool, self.size, "--node-subnet-pool", "--node-subnet-size")

    def assign(
        self,
        node_id: str,
        current: NodeNetwork,
        description: NodeDescription,
        others: Iterable[tuple[str, str]],
        protected: Iterable[Protected] = (),
    ) -> NodeNetwork:
        """The node's subnet after this registration.

        Args:
            node_id: The registering node.
            current: What its record holds (empty for a new node).
            description: What its agent reports (its bridge's subnet, fixed or not).
            others: ``(node id, subnet)`` of every other node that has one.
            protected: Addresses no node subnet may cover (controllers, etcd, nodes).

        Raises:
            CoversAddress: the node's fixed subnet covers a protected address.
        """
        taken = [
            (other, ipaddress.IPv4Network(subnet))
            for other, subnet in others
            if other != node_id and subnet
        ]
        guarded = list(protected)
        if not description.bridge_subnet:
            return NodeNetwork(message="the agent has no bridge network")
        if description.bridge_subnet_fixed:
            return _fixed(description.bridge_subnet, taken, guarded)
        if (
            current.subnet
            and not _overlapping(ipaddress.IPv4Network(current.subnet), taken)
            and not first_covered(ipaddress.IPv4Network(current.subnet), guarded)
        ):
            return NodeNetwork(subnet=current.subnet)
        block = self._free_block(taken, guarded)
        if block is None:
            return NodeNetwork(
                message=f"no free /{self.size} left in the node subnet pool "
                f"{self.pool}: give the controller a larger "
                "--node-subnet-pool"
            )
        return NodeNetwork(subnet=str(block))

    def _free_block(
        self, taken: list[tuple[str, ipaddress.IPv4Network]], guarded: list[Protected]
    ) -> ipaddress.IPv4Network | None:
        for block in ipaddress.IPv4Network(self.pool).subnets(new_prefix=self.size):
            if not _overlapping(block, taken) and not first_covered(block, guarded):
                return block
        return None


def _fixed(
    subnet: str, taken: list[tuple[str, ipaddress.IPv4Network]], guarded: list[Protected]
) -> NodeNetwork:
    try:
        if len(subnet) > len("255.255.255.255/32"):
            raise ValueError(f"bridge subnet of {len(subnet)} characters")
        network = check_subnet(subnet)
    except ValueError as exc:
        return NodeNetwork(message=f"the agent's bridge subnet is not usable: {exc}")
    covered = first_covered(network, guarded)
    if covered is not None:
        who, ip = covered
        raise CoversAddress(
            f"the agent's bridge subnet {subnet} covers the address {ip} of "
            f"{who}: every node would route it to this node. Give the agent "
            "another --bridge-subnet"
        )
    holder = _overlapping(network, taken)
    if holder:
        return NodeNetwork(
            message=f"the agent's bridge subnet {subnet} overlaps node "
            f"{holder[:12]}'s: give it another --bridge-subnet; its "
            "containers are not routed from other nodes"
        )
    return NodeNetwork(subnet=subnet)


def _overlapping(
    network: ipaddress.IPv4Network, taken: list[tuple[str, ipaddress.IPv4Network]]
) -> str:
    """The ID of a node whose subnet overlaps ``network`` ("" when none does)."""
    return next((node for node, other in taken if other.overlaps(network)), "")


def check_pool(pool: str, size: int, pool_flag: str, size_flag: str) -> None:
    """Refuse a pool that is not an IPv4 network, or a block size outside its prefix
    and /29, naming the flag.

    Raises:
        ValueError: which flag is wrong and why.
    """
    try:
        network = ipaddress.IPv4Network(pool, strict=True)
    except ValueError as exc:
        raise ValueError(f"{pool_flag} {pool!r}: {exc}") from None
    if not network.prefixlen <= size <= 29:
        raise ValueError(
            f"{size_flag} {size}: must be between the pool's prefix (/{network.prefixlen}) and /29"
        )


def first_covered(network: ipaddress.IPv4Network, guarded: list[Protected]) -> Protected | None:
    """The first protected address inside ``network``."""
    return next((item for item in guarded if item[1] in network), None)


def host_of_peer(peer: str) -> str:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.2:5100``, ``ipv6:[::1]:5``);
    "" when it is none (a unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""
