"""The ``ingress`` overlay network: what carries the routing mesh between nodes.

As Swarm's: one per cluster, created when the first port is published with
``mode=ingress`` (from the network pool, with its own VNI, shown by ``network ls``, not
removable while a service publishes such a port). Every task of such a service gets an
address on it (``ingress_addresses``: beside the networks of its spec, allocated with
them), and every node one of its own (``NodeAddresses``: written by the leader on the
network's record, from the top of the subnet down while tasks take from the bottom up,
as VIPs do). A node DNATs a published port to the tasks' ingress addresses over the
VXLAN and SNATs to its own, so the mesh needs no route between the nodes' subnets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

from dockyard.controller.network_addresses import AddressExhausted, next_vip
from dockyard.controller.store import NETWORKS, AlreadyExists, Conflict, Store
from dockyard.v1.networks_pb2 import Network, NetworkSpec
from dockyard.v1.workloads_pb2 import ServiceSpec

if TYPE_CHECKING:
    from dockyard.controller.networks import NetworkRegistry
    from dockyard.controller.state import ClusterState

__all__ = [
    "INGRESS_NAME",
    "NodeAddresses",
    "ensure_ingress_network",
    "find_ingress",
    "node_addresses",
    "publishes_ingress",
]

log = structlog.get_logger(__name__)

INGRESS_NAME = "ingress"
SETTLE_SECONDS = 0.5
"""Between two looks at the nodes: a burst of joins makes one write."""


def publishes_ingress(spec: ServiceSpec) -> bool:
    """The spec publishes a port through the routing mesh."""
    return any(p.publish_mode == "ingress" and p.published_port for p in spec.task.ports)


def find_ingress(networks: Iterable[Network]) -> Network | None:
    """The cluster's ingress network, if it has one."""
    return next((n for n in networks if n.spec.ingress), None)


async def ensure_ingress_network(registry: NetworkRegistry) -> Network:
    """The ingress network, created now if the cluster has none (two controllers racing
    to create it: one wins, the other finds it)."""
    found = find_ingress(await registry.list_all())
    if found is not None:
        return found
    try:
        return await registry.create(NetworkSpec(name=INGRESS_NAME, ingress=True))
    except AlreadyExists:
        found = find_ingress(await registry.list_all())
        if found is None:  # a user network took the name: Swarm reserves it, so do we
            raise
        return found


def node_addresses(network: Network, nodes: Iterable[str], used: set[str]) -> dict[str, str]:
    """Node ID -> its ingress address: kept for nodes that have one, a free one for the
    others, none for nodes that are gone (``used``: the tasks' addresses there).

    Raises:
        AddressExhausted: the network has no free address left for a node.
    """
    wanted = sorted(set(nodes))
    kept = {n: a for n, a in network.node_addresses.items() if n in wanted}
    taken = used | set(kept.values())
    for node in wanted:
        if node not in kept:
            kept[node] = next_vip(network, taken)
    return kept


class NodeAddresses:
    """The leader's loop that gives each node of the view an ingress address (and frees
    a removed node's), once the ingress network exists.

    Args:
        store: The leader's (fenced) store.
        state: The leader's view of the cluster.
    """

    def __init__(self, store: Store, state: ClusterState) -> None:
        self._store = store
        self._state = state
        self._changed = state.subscribe()

    async def run(self) -> None:
        while True:
            await self.settle()
            await self._changed.wait()
            self._changed.clear()
            await asyncio.sleep(SETTLE_SECONDS)

    async def settle(self) -> None:
        """Write the addresses the view lacks (a no-op when none is missing)."""
        state = self._state
        network = find_ingress(state.networks.values())
        if network is None:
            return
        used = {
            held.address
            for task in state.tasks.values()
            for held in task.networks
            if held.network_id == network.id
        }
        try:
            wanted = node_addresses(network, state.nodes, used)
        except AddressExhausted as exc:
            log.error("ingress.no_node_address", error=str(exc))
            return
        if wanted == dict(network.node_addresses):
            return
        record = Network()
        record.CopyFrom(network)
        record.node_addresses.clear()
        record.node_addresses.update(wanted)
        try:
            await self._store.commit(
                [self._store.put_op(NETWORKS, record.id, record, expect=network.meta.version)]
            )
        except Conflict:
            self._changed.set()  # the record changed meanwhile: look again once the view has it
            return
        log.info("ingress.node_addresses", nodes=len(wanted))
