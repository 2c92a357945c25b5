"""Network map deltas: applying one to the map an agent holds, and folding two into one.

A delta map (``NetworkMap.base_version`` set) holds what changed since the map of
``base_version``: peers, services and overlays added or changed (keyed by node ID, name
and network ID; a service's or an overlay's entry, and an overlay's name, may be a
``patch`` of the one held: what it adds and what it takes) and the keys of those gone,
revoked serials added and
gone, the mesh's ports when they changed (``ingress_replaced``), and the node's own
fields (subnet, address, ingress address) always. The agent applies one only on exactly
that map (agent/session.py), and the result is field-equal to the full map of the same
version: each list ordered by its key, as the controller builds them. The controller's
outbox folds a delta into a map still waiting (``compose_maps``), so the versions the
agent sees follow on without a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from google.protobuf.internal.containers import (
    RepeatedCompositeFieldContainer,
    RepeatedScalarFieldContainer,
)
from google.protobuf.message import Message

from dockyard.v1.dispatcher_pb2 import NetworkMap, PeerNetwork, ServiceAddresses
from dockyard.v1.networks_pb2 import OverlayEndpoint, OverlayName, OverlayNetworkMap

__all__ = ["apply_map_delta", "compose_maps", "is_delta"]


M = TypeVar("M", bound=Message)


def is_delta(network_map: NetworkMap) -> bool:
    """Whether ``network_map`` is a delta (else a full map, which replaces everything)."""
    return network_map.base_version != 0


def apply_map_delta(held: NetworkMap, delta: NetworkMap) -> NetworkMap:
    """The full map ``delta`` makes of ``held`` (a new message: ``held`` is not changed).
    The caller checked that ``delta.base_version`` is ``held.version``.

    Raises:
        ValueError: the delta patches a service's addresses or an overlay's entries that
            ``held`` does not have (it was not made on this map): nothing is applied.
    """
    result = NetworkMap()
    result.CopyFrom(held)  # in C; only the sections the delta touches are rebuilt
    result.version = delta.version
    result.subnet = delta.subnet
    result.address = delta.address
    result.ingress_address = delta.ingress_address
    peers, gone_peers = delta.peers, delta.removed_peers
    if (peers or gone_peers) and not _changed_in_place(result.peers, gone_peers, peers, _peer_key):
        del result.peers[:]
        result.peers.extend(_merged(held.peers, gone_peers, peers, _peer_key))
    services, gone = delta.services, delta.removed_services
    if (services or gone) and not _changed_in_place(
        result.services, gone, services, _service_key, _patched
    ):
        del result.services[:]
        result.services.extend(
            _merged_patched(held.services, gone, services, _service_key, _patched)
        )
    overlays, gone = delta.overlays, delta.removed_overlays
    if (overlays or gone) and not _changed_in_place(
        result.overlays, gone, overlays, _overlay_key, _patched_overlay
    ):
        del result.overlays[:]
        result.overlays.extend(
            _merged_patched(held.overlays, gone, overlays, _overlay_key, _patched_overlay)
        )
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
    try:
        return _composed(older, newer)
    except ValueError:  # a patch of what the older lacks: not made on it
        return None


def _composed(older: NetworkMap, newer: NetworkMap) -> NetworkMap | None:
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
    if not _fold_patched(
        older.services,
        older.removed_services,
        merged.services,
        merged.removed_services,
        _service_key,
        _patched,
    ) or not _fold_patched(
        older.overlays,
        older.removed_overlays,
        merged.overlays,
        merged.removed_overlays,
        _overlay_key,
        _patched_overlay,
    ):
        return None
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


def _changed_in_place(
    section: RepeatedCompositeFieldContainer[M],
    removed: Sequence[str],
    changed: Sequence[M],
    key: Callable[[M], str],
    combine: Callable[[M, M], M] | None = None,
) -> bool:
    """Put ``changed`` into ``section`` entry by entry when each replaces one there and
    none is removed (the order by key stays), rather than rebuilding it (a copy of every
    entry: every address of every service); False, nothing done, otherwise."""
    if removed:
        return False
    index = {key(entry): i for i, entry in enumerate(section)}
    if any(key(entry) not in index for entry in changed):
        return False
    for entry in changed:
        at = section[index[key(entry)]]
        at.CopyFrom(combine(at, entry) if combine is not None else entry)
    return True


def _merged_patched(
    held: Iterable[M],
    removed: Iterable[str],
    changed: Iterable[M],
    key: Callable[[M], str],
    combine: Callable[[M, M], M],
) -> list[M]:
    """As ``_merged``, a patch entry combined with the held entry of its key."""
    by_key = {key(entry): entry for entry in held}
    for gone in removed:
        by_key.pop(gone, None)
    for entry in changed:
        k = key(entry)
        if not _is_patch(entry):
            by_key[k] = entry
            continue
        base = by_key.get(k)
        if base is None:
            raise ValueError(f"a patch of {k[:200]!r}, which the map does not hold")
        by_key[k] = combine(base, entry)
    return [by_key[k] for k in sorted(by_key)]


def _patched(base: ServiceAddresses, patch: ServiceAddresses) -> ServiceAddresses:
    """``base`` (a whole entry or a patch) then ``patch`` (a patch or a whole entry,
    which replaces it), as one entry of base's kind."""
    if not patch.patch:
        return patch
    added = set(patch.addresses)
    if not base.patch:
        kept = set(base.addresses) - set(patch.removed_addresses)
        return ServiceAddresses(name=base.name, addresses=sorted(kept | added))
    added |= set(base.addresses) - set(patch.removed_addresses)
    removed = (set(base.removed_addresses) | set(patch.removed_addresses)) - added
    return ServiceAddresses(
        name=base.name, addresses=sorted(added), removed_addresses=sorted(removed), patch=True
    )


def _patched_overlay(base: OverlayNetworkMap, patch: OverlayNetworkMap) -> OverlayNetworkMap:
    """``base`` (a whole entry or a patch) then ``patch`` (a patch or a whole entry,
    which replaces it), as one entry of base's kind."""
    if not patch.patch:
        return patch
    result = OverlayNetworkMap(network=patch.network, patch=base.patch)
    result.endpoints.extend(
        _merged(base.endpoints, patch.removed_endpoints, patch.endpoints, _endpoint_key)
    )
    if not base.patch:
        result.names.extend(
            _merged_patched(base.names, patch.removed_names, patch.names, _name_key, _patched_name)
        )
        return result
    put = {e.address for e in patch.endpoints}
    gone = dict.fromkeys([*base.removed_endpoints, *patch.removed_endpoints])
    result.removed_endpoints.extend(k for k in gone if k not in put)
    result.names.extend(patch.names)
    result.removed_names.extend(patch.removed_names)
    if not _fold_patched(
        base.names, base.removed_names, result.names, result.removed_names, _name_key, _patched_name
    ):
        raise ValueError(f"a patch of a name the overlay {patch.network.id[:200]!r} lost")
    return result


def _patched_name(base: OverlayName, patch: OverlayName) -> OverlayName:
    """``base`` (a whole name or a patch) then ``patch`` (a patch or a whole name,
    which replaces it), as one name of base's kind."""
    if not patch.patch:
        return patch
    if not base.patch:
        return OverlayName(
            name=base.name,
            vip=patch.vip,
            addresses=sorted(
                _set_patched(base.addresses, patch.removed_addresses, patch.addresses)
            ),
            backends=sorted(_set_patched(base.backends, patch.removed_backends, patch.backends)),
        )
    added = _set_patched(base.addresses, patch.removed_addresses, patch.addresses)
    backends = _set_patched(base.backends, patch.removed_backends, patch.backends)
    return OverlayName(
        name=base.name,
        vip=patch.vip,
        patch=True,
        addresses=sorted(added),
        removed_addresses=sorted(
            (set(base.removed_addresses) | set(patch.removed_addresses)) - added
        ),
        backends=sorted(backends),
        removed_backends=sorted(
            (set(base.removed_backends) | set(patch.removed_backends)) - backends
        ),
    )


def _set_patched(held: Iterable[str], removed: Iterable[str], added: Iterable[str]) -> set[str]:
    return (set(held) - set(removed)) | set(added)


def _fold_patched(
    older: Iterable[M],
    older_removed: Sequence[str],
    entries: RepeatedCompositeFieldContainer[M],
    removed: RepeatedScalarFieldContainer[str],
    key: Callable[[M], str],
    combine: Callable[[M, M], M],
) -> bool:
    """As ``_fold``, a newer patch combined with the older entry of its key; False when
    the newer patches an entry the older removed (it was not made on it)."""
    newer: dict[str, M] = {key(entry): entry for entry in entries}
    newer_removed = set(removed)
    kept: list[M] = []
    for entry in older:
        k = key(entry)
        if k in newer_removed:
            continue
        later = newer.get(k)
        if later is None:
            kept.append(entry)
        elif _is_patch(later):
            newer[k] = combine(entry, later)
    if any(_is_patch(later) and k in older_removed for k, later in newer.items()):
        return False
    folded = [*newer.values(), *kept]  # (upb keeps an entry deleted from its container)
    gone = dict.fromkeys([*older_removed, *removed])
    del entries[:]
    entries.extend(folded)
    removed[:] = [k for k in gone if k not in newer]
    return True


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


def _is_patch(entry: Message) -> bool:
    """Whether a service's or an overlay's entry is a patch (of the entry held)."""
    return bool(getattr(entry, "patch", False))


def _peer_key(peer: PeerNetwork) -> str:
    return peer.node_id


def _service_key(service: ServiceAddresses) -> str:
    return service.name


def _overlay_key(overlay: OverlayNetworkMap) -> str:
    return overlay.network.id


def _endpoint_key(endpoint: OverlayEndpoint) -> str:
    return endpoint.address


def _name_key(name: OverlayName) -> str:
    return name.name
