"""Network map deltas: applying one to the map an agent holds, and folding two into one.

A delta map (``NetworkMap.base_version`` set) holds what changed since the map of
``base_version``: peers, services and overlays added or changed (whole entries, keyed
by node ID, name and network ID) and the keys of those gone, revoked serials added and
gone, the mesh's ports when they changed (``ingress_replaced``), and the node's own
fields (subnet, address, ingress address) always. The agent applies one only on exactly
that map (agent/session.py), and the result is field-equal to the full map of the same
version: each list ordered by its key, as the controller builds them. The controller's
outbox folds a delta into a map still waiting (``compose_maps``), so the versions the
agent sees follow on without a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.internal.containers import (
    RepeatedCompositeFieldContainer,
    RepeatedScalarFieldContainer,
)
from google.protobuf.message import Message

from dockyard.v1.dispatcher_pb2 import NetworkMap, PeerNetwork, ServiceAddresses
from dockyard.v1.networks_pb2 import OverlayNetworkMap

__all__ = ["apply_map_delta", "compose_maps", "is_delta"]


M = TypeVar("M", bound=Message)


def is_delta(network_map: NetworkMap) -> bool:
    """Whether ``network_map`` is a delta (else a full map, which replaces everything)."""
    return network_map.base_version != 0


def apply_map_delta(held: NetworkMap, delta: NetworkMap) -> NetworkMap:
    """The full map ``delta`` makes of ``held`` (a new message: ``held`` is not changed).
    The caller checked that ``delta.base_version`` is ``held.version``."""
    result = NetworkMap()
    result.CopyFrom(held)  # in C; only the sections the delta touches are rebuilt
    result.version = delta.version
    result.subnet = delta.subnet
    result.address = delta.address
    result.ingress_address = delta.ingress_address
    if delta.peers or delta.removed_peers:
        peers = _merged(held.peers, delta.removed_peers, delta.peers, _peer_key)
        del result.peers[:]
        result.peers.extend(peers)
    if delta.services or delta.removed_services:
        services = _merged(held.services, delta.removed_services, delta.services, _service_key)
        del result.services[:]
        result.services.extend(services)
    if delta.overlays or delta.removed_overlays:
        overlays = _merged(held.overlays, delta.removed_overlays, delta.overlays, _overlay_key)
        del result.overlays[:]
        result.overlays.extend(overlays)
    if delta.revoked_serials or delta.unrevoked_serials:
        revoked = set(held.revoked_serials) - set(delta.unrevoked_serials)
        result.revoked_serials[:] = sorted(revoked | set(delta.revoked_serials))
    if delta.ingress_replaced:
        del result.ingress[:]
        result.ingress.extend(delta.ingress)
    return result


def compose_maps(older: NetworkMap, newer: NetworkMap) -> NetworkMap | None:
    """``older`` then ``newer`` as one map (a full one if ``older`` is full); None when
    ``newer`` is a delta that does not follow ``older`` (the agent then asks again)."""
    if not is_delta(newer):
        return newer
    if newer.base_version != older.version:
        return None
    if not is_delta(older):
        return apply_map_delta(older, newer)
    merged = NetworkMap()
    merged.CopyFrom(newer)
    merged.base_version = older.base_version
    _fold(older.peers, older.removed_peers, merged.peers, merged.removed_peers, _peer_key)
    _fold(
        older.services,
        older.removed_services,
        merged.services,
        merged.removed_services,
        _service_key,
    )
    _fold(
        older.overlays,
        older.removed_overlays,
        merged.overlays,
        merged.removed_overlays,
        _overlay_key,
    )
    added = set(older.revoked_serials) - set(newer.unrevoked_serials)
    added |= set(newer.revoked_serials)
    gone = (set(older.unrevoked_serials) | set(newer.unrevoked_serials)) - added
    merged.revoked_serials[:] = sorted(added)
    merged.unrevoked_serials[:] = sorted(gone)
    if not newer.ingress_replaced and older.ingress_replaced:
        merged.ingress_replaced = True
        merged.ingress.extend(older.ingress)
    return merged


def _merged(
    held: Iterable[M], removed: Iterable[str], changed: Iterable[M], key: Callable[[M], str]
) -> list[M]:
    """``held`` without the ``removed`` keys, with ``changed`` put in, ordered by key."""
    by_key = {key(entry): entry for entry in held}
    for gone in removed:
        by_key.pop(gone, None)
    for entry in changed:
        by_key[key(entry)] = entry
    return [by_key[k] for k in sorted(by_key)]


def _fold(
    older: Iterable[M],
    older_removed: Iterable[str],
    entries: RepeatedCompositeFieldContainer[M],
    removed: RepeatedScalarFieldContainer[str],
    key: Callable[[M], str],
) -> None:
    """Fold an older delta's section into a newer one's (``entries`` and ``removed``,
    changed in place): the newer's entries and removals win over the older's."""
    newer_keys = {key(entry) for entry in entries}
    newer_removed = set(removed)
    kept = [e for e in older if key(e) not in newer_keys and key(e) not in newer_removed]
    gone = dict.fromkeys([*older_removed, *removed])
    entries.extend(kept)
    removed[:] = [k for k in gone if k not in newer_keys]


def _peer_key(peer: PeerNetwork) -> str:
    return peer.node_id


def _service_key(service: ServiceAddresses) -> str:
    return service.name


def _overlay_key(overlay: OverlayNetworkMap) -> str:
    return overlay.network.id
