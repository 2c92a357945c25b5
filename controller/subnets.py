"""Which bridge subnet each node's containers get on the cluster network.

Each node's bridge takes one subnet, and every other node routes that subnet to the
node's host address (``agent/network/routes.py``), as flannel's host-gw backend and
Kubernetes' node pod CIDRs do. A node that asks for nothing in particular gets the next
free block of the controller's pool (``--node-subnet-pool``, cut into
``--node-subnet-size`` blocks) and keeps it across restarts. A node whose subnet is
fixed (``--bridge-subnet``, or containers already hold addresses in it) keeps it, unless
it overlaps another node's: then it gets none, and a message that says with whom.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.common.validation import check_subnet
from dockyard.v1.types_pb2 import NodeDescription, NodeNetwork

__all__ = ["DEFAULT_POOL", "DEFAULT_SIZE", "SubnetPool", "host_of_peer"]

DEFAULT_POOL = "10.87.0.0/16"
"""The agents' own default bridge range: a node outside a cluster keeps using it whole."""
DEFAULT_SIZE = 24


@dataclass(frozen=True)
class SubnetPool:
    """The controller's pool of node subnets.

    Raises:
        ValueError: the pool or the block size is not usable (naming which).
    """

    pool: str = DEFAULT_POOL
    size: int = DEFAULT_SIZE

    def __post_init__(self) -> None:
        try:
            network = ipaddress.IPv4Network(self.pool, strict=True)
        except ValueError as exc:
            raise ValueError(f"--node-subnet-pool {self.pool!r}: {exc}") from None
        if not network.prefixlen <= self.size <= 29:
            raise ValueError(f"--node-subnet-size {self.size}: must be between the pool's "
                             f"prefix (/{network.prefixlen}) and /29")  # fmt: skip

    def assign(self, node_id: str, current: NodeNetwork, description: NodeDescription,
               others: Iterable[tuple[str, str]]) -> NodeNetwork:  # fmt: skip
        """The node's subnet after this registration.

        Args:
            node_id: The registering node.
            current: What its record holds (empty for a new node).
            description: What its agent reports (its bridge's subnet, fixed or not).
            others: ``(node id, subnet)`` of every other node that has one.
        """
        taken = [(other, ipaddress.IPv4Network(subnet)) for other, subnet in others
                 if other != node_id and subnet]  # fmt: skip
        if not description.bridge_subnet:
            return NodeNetwork(message="the agent has no bridge network")
        if description.bridge_subnet_fixed:
            return _fixed(description.bridge_subnet, taken)
        if current.subnet and not _overlapping(ipaddress.IPv4Network(current.subnet), taken):
            return NodeNetwork(subnet=current.subnet)
        block = self._free_block(taken)
        if block is None:
            return NodeNetwork(message=f"no free /{self.size} left in the node subnet pool "
                                       f"{self.pool}: give the controller a larger "
                                       "--node-subnet-pool")  # fmt: skip
        return NodeNetwork(subnet=str(block))

    def _free_block(self, taken: list[tuple[str, ipaddress.IPv4Network]]
                    ) -> ipaddress.IPv4Network | None:  # fmt: skip
        for block in ipaddress.IPv4Network(self.pool).subnets(new_prefix=self.size):
            if not _overlapping(block, taken):
                return block
        return None


def _fixed(subnet: str, taken: list[tuple[str, ipaddress.IPv4Network]]) -> NodeNetwork:
    try:
        if len(subnet) > len("255.255.255.255/32"):
            raise ValueError(f"bridge subnet of {len(subnet)} characters")
        network = check_subnet(subnet)
    except ValueError as exc:
        return NodeNetwork(message=f"the agent's bridge subnet is not usable: {exc}")
    holder = _overlapping(network, taken)
    if holder:
        return NodeNetwork(message=f"the agent's bridge subnet {subnet} overlaps node "
                                   f"{holder[:12]}'s: give it another --bridge-subnet; its "
                                   "containers are not routed from other nodes")  # fmt: skip
    return NodeNetwork(subnet=subnet)


def _overlapping(network: ipaddress.IPv4Network,
                 taken: list[tuple[str, ipaddress.IPv4Network]]) -> str:  # fmt: skip
    """The ID of a node whose subnet overlaps ``network`` ("" when none does)."""
    return next((node for node, other in taken if other.overlaps(network)), "")


def host_of_peer(peer: str) -> str:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.2:5100``, ``ipv6:[::1]:5``);
    "" when it is none (a unix socket)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""
