"""The overlay part of each node's NetworkMap, computed from the leader's view.

For every cluster network some task uses: the network, every container on it (address
and its node's underlay address: the forwarding entries the other nodes write) and its
names (a service's name with its VIP and the running tasks behind it, or the tasks'
addresses for ``dnsrr``; ``tasks.NAME``; each alias). A node gets the networks its own
live tasks are on, and every node the ``ingress`` network (the routing mesh's) once it
has an address there, with every node's address on it as an endpoint. A standalone
container on an attachable network (controller/attachments.py) is an endpoint there, its
node a member, and its name and aliases names on it. Task containers are
listed from ASSIGNED on, so a container's entries are on the other nodes before it
starts; names list RUNNING tasks only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.common.states import TaskState
from dockyard.controller.network_addresses import live
from dockyard.v1.networks_pb2 import (
    Network,
    NetworkAttachmentRecord,
    OverlayEndpoint,
    OverlayName,
    OverlayNetworkMap,
)
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = ["Overlays", "node_overlays", "overlays"]

Overlays = dict[str, bytes]
"""Network ID -> its serialized OverlayNetworkMap (bytes compare cheaply for changes)."""


def overlays(
    networks: Mapping[str, Network],
    services: Iterable[Service],
    tasks: Iterable[Task],
    nodes: Mapping[str, Node],
    attachments: Iterable[NetworkAttachmentRecord] = (),
) -> tuple[Overlays, dict[str, frozenset[str]]]:
    """Every used network's map, and node ID -> the networks its live tasks (and its
    standalone containers) are on."""
    maps: dict[str, OverlayNetworkMap] = {}
    running: dict[tuple[str, str], list[str]] = {}  # (service, network) -> addresses
    members: dict[str, set[str]] = {}
    for task in tasks:
        if not task.networks or not live(task) or task.desired_state > TaskState.RUNNING:
            continue
        node = nodes.get(task.node_id)
        for held in task.networks:
            network = networks.get(held.network_id)
            if network is None:
                continue
            overlay = maps.setdefault(network.id, OverlayNetworkMap(network=network))
            if node is not None and node.network.address:
                members.setdefault(node.id, set()).add(network.id)
                overlay.endpoints.append(
                    OverlayEndpoint(
                        address=held.address, host=node.network.address, task_id=task.id
                    )
                )
            if task.status.state == TaskState.RUNNING:
                running.setdefault((task.service_id, network.id), []).append(held.address)
    _ingress_nodes(networks, nodes, maps, members)
    _attached(networks, nodes, attachments, maps, members)
    for service in services:
        for attachment in service.spec.task.networks:
            named = maps.get(attachment.network_id)
            if named is None:
                continue
            addresses = sorted(running.get((service.id, attachment.network_id), []))
            named.names.extend(_names(service, attachment.aliases, attachment.vip, addresses))
    for overlay in maps.values():
        overlay.endpoints.sort(key=lambda e: e.address)
        overlay.names.sort(key=lambda n: n.name)
    serialized = {nid: m.SerializeToString(deterministic=True) for nid, m in maps.items()}
    return serialized, {node: frozenset(ids) for node, ids in members.items()}


def _ingress_nodes(
    networks: Mapping[str, Network],
    nodes: Mapping[str, Node],
    maps: dict[str, OverlayNetworkMap],
    members: dict[str, set[str]],
) -> None:
    """Every node with an ingress address is on the ingress network (the routing mesh
    answers on nodes that run no task), its address an endpoint for the others."""
    ingress = next((n for n in networks.values() if n.spec.ingress), None)
    if ingress is None or not ingress.node_addresses:
        return
    overlay = maps.setdefault(ingress.id, OverlayNetworkMap(network=ingress))
    for node_id, address in ingress.node_addresses.items():
        node = nodes.get(node_id)
        if node is None or not node.network.address:
            continue
        members.setdefault(node_id, set()).add(ingress.id)
        overlay.endpoints.append(OverlayEndpoint(address=address, host=node.network.address))


def _attached(
    networks: Mapping[str, Network],
    nodes: Mapping[str, Node],
    attachments: Iterable[NetworkAttachmentRecord],
    maps: dict[str, OverlayNetworkMap],
    members: dict[str, set[str]],
) -> None:
    """Each standalone container: an endpoint on its network, and its name and aliases
    names there (as Swarm's attachment tasks are resolved by container name)."""
    for attached in attachments:
        network = networks.get(attached.network_id)
        node = nodes.get(attached.node_id)
        if network is None or node is None or not node.network.address:
            continue
        overlay = maps.setdefault(network.id, OverlayNetworkMap(network=network))
        members.setdefault(node.id, set()).add(network.id)
        overlay.endpoints.append(
            OverlayEndpoint(
                address=attached.address,
                host=node.network.address,
                container_id=attached.container_id,
            )
        )
        for name in (attached.container_name, *attached.aliases):
            if name:
                overlay.names.append(OverlayName(name=name, addresses=[attached.address]))


def _names(
    service: Service, aliases: Iterable[str], vip: str, addresses: list[str]
) -> list[OverlayName]:
    # ``tasks.ALIAS`` too, as libnetwork's addServiceBinding does for a service's aliases
    # (a stack's short names are aliases: ``tasks.db`` works under docker stack deploy).
    names = [
        OverlayName(name=f"tasks.{name}", addresses=addresses)
        for name in (service.spec.name, *aliases)
    ]
    for name in (service.spec.name, *aliases):
        if vip:
            names.append(OverlayName(name=name, addresses=[vip], vip=vip, backends=addresses))
        else:
            names.append(OverlayName(name=name, addresses=addresses))
    return names


def node_overlays(
    node_id: str, maps: Overlays, members: Mapping[str, frozenset[str]]
) -> list[OverlayNetworkMap]:
    """The maps of the networks ``node_id``'s tasks are on."""
    return [
        OverlayNetworkMap.FromString(maps[nid])
        for nid in sorted(members.get(node_id, frozenset()))
        if nid in maps
    ]
