"""A node's network map as a delta on the map it holds (common/map_delta.py says what a
delta holds and how the agent applies it).

The mapper keeps, per session, the state of the cluster network the node's last map was
built from (an object shared by every node sent the same send: no copy per node). A send
compares that state with the new one once per distinct base (``shared_delta``: peers,
names, revoked serials and the mesh's ports, alike for every node), and each node's
message is a copy of it without its own peer, plus its own fields and its overlays that
changed (``node_delta``). What a delta carries grows with what changed, not with the
cluster: one task starting changes one service's addresses, not 1,000 peers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.controller.overlay_map import Overlays
from dockyard.controller.service_names import Names
from dockyard.v1.dispatcher_pb2 import (
    DispatcherMessage,
    IngressPort,
    NetworkMap,
    PeerNetwork,
    ServiceAddresses,
)
from dockyard.v1.networks_pb2 import OverlayName, OverlayNetworkMap
from dockyard.v1.types_pb2 import Node

__all__ = [
    "Ingress",
    "IngressView",
    "MapState",
    "OverlayView",
    "Revoked",
    "Routes",
    "SharedDelta",
    "ingress_entries",
    "node_delta",
    "own_copy",
    "shared_delta",
]

Routes = frozenset[tuple[str, str, str]]
Revoked = tuple[str, ...]
OverlayView = tuple[Overlays, dict[str, frozenset[str]]]
Ingress = tuple[tuple[int, int, str, tuple[str, ...], tuple[str, ...]], ...]
"""(published, target, protocol, the RUNNING tasks' cluster-network addresses, and their
ingress-network addresses) of each mode=ingress port."""
IngressView = tuple[Ingress, tuple[tuple[str, str], ...]]
"""The ports, and (node ID, its ingress address) of every node that has one."""
MapState = tuple[Routes, Names, Revoked, OverlayView, IngressView]
"""What every node's map is built from (one send's, or one greeting's)."""


@dataclass(frozen=True)
class SharedDelta:
    """What every node's delta on the same base holds alike, built once per send and
    base; a node's delta is a copy of ``template`` without its own peer, plus its own
    fields and overlays."""

    template: NetworkMap
    peer_index: dict[str, int]
    """Node ID -> its position in ``template.peers``."""
    removed_index: dict[str, int]
    """Node ID -> its position in ``template.removed_peers``."""
    base: OverlayView
    current: OverlayView
    changed_overlays: dict[str, OverlayNetworkMap]
    """The networks whose map differs from the base's and that the base had: the entry
    a node holding the base's is sent (a patch when that is smaller)."""
    ingress_addresses: dict[str, str]


def ingress_entries(ingress: Ingress) -> list[IngressPort]:
    return [
        IngressPort(
            published_port=published,
            target_port=target,
            protocol=protocol,
            backends=backends,
            ingress_backends=overlay,
        )
        for published, target, protocol, backends, overlay in ingress
    ]


def shared_delta(base: MapState, current: MapState) -> SharedDelta | None:
    """The part of every node's delta from ``base`` to ``current`` that does not depend on
    the node; None when the services' names or the serials repeat (keys the agent could
    not tell apart): those nodes get a full map."""
    routes, names, revoked, overlays, ingress = current
    if _repeats(name for name, _ in names) or _repeats(revoked):
        return None
    base_routes, base_names, base_revoked, base_overlays, base_ingress = base
    changed_routes = sorted(routes - base_routes)
    changed_ids = {node_id for node_id, _, _ in changed_routes}
    removed_peers = sorted({r[0] for r in base_routes - routes} - changed_ids)
    held_names = dict(base_names)
    template = NetworkMap(
        peers=[PeerNetwork(node_id=i, subnet=s, address=a) for i, s, a in changed_routes],
        removed_peers=removed_peers,
        services=[
            _service_entry(name, held_names.get(name), addresses)
            for name, addresses in names
            if held_names.get(name) != addresses
        ],
        removed_services=sorted(held_names.keys() - {name for name, _ in names}),
        revoked_serials=sorted(set(revoked) - set(base_revoked)),
        unrevoked_serials=sorted(set(base_revoked) - set(revoked)),
    )
    if ingress[0] != base_ingress[0]:
        template.ingress_replaced = True
        template.ingress.extend(ingress_entries(ingress[0]))
    maps, base_maps = overlays[0], base_overlays[0]
    changed = {
        nid: _overlay_entry(base_maps[nid], data)
        for nid, data in maps.items()
        if nid in base_maps and base_maps[nid] != data
    }
    return SharedDelta(
        template,
        {node_id: i for i, (node_id, _, _) in enumerate(changed_routes)},
        {node_id: i for i, node_id in enumerate(removed_peers)},
        base_overlays,
        overlays,
        changed,
        dict(ingress[1]),
    )


def own_copy(
    node: Node, template: NetworkMap, peer_index: dict[str, int], ingress: dict[str, str]
) -> DispatcherMessage:
    """A message holding ``template`` copied in C, without ``node``'s own entry in its
    peers (at ``peer_index``), with ``node``'s subnet, address and ingress address:
    what a full map and a delta share of being made per node."""
    message = DispatcherMessage()
    network = message.network
    network.CopyFrom(template)
    own = peer_index.get(node.id)
    if own is not None:
        del network.peers[own]
    network.subnet = node.network.subnet
    network.address = node.network.address
    network.ingress_address = ingress.get(node.id, "")
    return message


def node_delta(node: Node, shared: SharedDelta) -> DispatcherMessage:
    """``node``'s delta, in the message that carries it (versions not set yet)."""
    message = own_copy(node, shared.template, shared.peer_index, shared.ingress_addresses)
    network = message.network
    own = shared.removed_index.get(node.id)
    if own is not None:
        del network.removed_peers[own]
    (base_maps, base_members), (maps, members) = shared.base, shared.current
    before = {nid for nid in base_members.get(node.id, ()) if nid in base_maps}
    now = {nid for nid in members.get(node.id, ()) if nid in maps}
    changed = shared.changed_overlays
    network.overlays.extend(
        OverlayNetworkMap.FromString(maps[nid]) if nid not in before else changed[nid]
        for nid in sorted(now)
        if nid not in before or nid in changed
    )
    network.removed_overlays.extend(sorted(before - now))
    return message


def _service_entry(
    name: str, held: tuple[str, ...] | None, addresses: tuple[str, ...]
) -> ServiceAddresses:
    """A changed service's entry: a patch of the addresses the agent holds when that is
    smaller (a task started or stopped among many), else the whole list. Never a patch
    when an address repeats (a patch adds and removes addresses as a set)."""
    if held is None or _repeats(held) or _repeats(addresses):
        return ServiceAddresses(name=name, addresses=addresses)
    now, before = set(addresses), set(held)
    added, removed = now - before, before - now
    if len(added) + len(removed) >= len(addresses):
        return ServiceAddresses(name=name, addresses=addresses)
    return ServiceAddresses(
        name=name, addresses=sorted(added), removed_addresses=sorted(removed), patch=True
    )


def _overlay_entry(before: bytes, now: bytes) -> OverlayNetworkMap:
    """A changed overlay's entry for a node that holds ``before``: its endpoints and names
    added, changed and gone (by address, by name) when that is smaller than the whole
    map, and never when an address or a name repeats (the agent keys them)."""
    held, current = OverlayNetworkMap.FromString(before), OverlayNetworkMap.FromString(now)
    held_endpoints = {e.address: e for e in held.endpoints}
    endpoints = {e.address: e for e in current.endpoints}
    held_names = {n.name: n for n in held.names}
    names = {n.name: n for n in current.names}
    if (
        len(held_endpoints) != len(held.endpoints)
        or len(endpoints) != len(current.endpoints)
        or len(held_names) != len(held.names)
        or len(names) != len(current.names)
    ):
        return current
    patch = OverlayNetworkMap(
        network=current.network,
        patch=True,
        endpoints=[e for a, e in endpoints.items() if held_endpoints.get(a) != e],
        removed_endpoints=sorted(held_endpoints.keys() - endpoints.keys()),
        names=[
            _name_entry(held_names.get(k), n) for k, n in names.items() if held_names.get(k) != n
        ],
        removed_names=sorted(held_names.keys() - names.keys()),
    )
    return patch if patch.ByteSize() < len(now) else current


def _name_entry(held: OverlayName | None, name: OverlayName) -> OverlayName:
    """A changed name's entry: a patch of its addresses and backends when smaller (a task
    started or stopped among many), never when an address repeats."""
    lists = (name.addresses, name.backends)
    if held is None or any(_repeats(x) for x in (*lists, held.addresses, held.backends)):
        return name
    patch = OverlayName(
        name=name.name,
        vip=name.vip,
        patch=True,
        addresses=sorted(set(name.addresses) - set(held.addresses)),
        removed_addresses=sorted(set(held.addresses) - set(name.addresses)),
        backends=sorted(set(name.backends) - set(held.backends)),
        removed_backends=sorted(set(held.backends) - set(name.backends)),
    )
    return patch if patch.ByteSize() < name.ByteSize() else name


def _repeats(keys: Iterable[str]) -> bool:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return True
        seen.add(key)
    return False
