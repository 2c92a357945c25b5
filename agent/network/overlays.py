"""``OverlayManager``: this node's overlay networks, kept as the controller's maps say.

The controller's NetworkMap lists the overlay networks this node's tasks are on, with
every container on each (address and host) and every name. From each map:

- each listed network has its bridge and VXLAN device, and exactly the forwarding
  entries of the containers on other hosts (``overlay.py``);
- a network no longer listed, with no local container left on it, is removed;
- every local container on overlays gets the VIPs of every name on its networks
  (``vip.py``, nftables in its own namespace), and the node's DNS server gets the names
  each container may see: only those of the networks it is on.

A task's container joins its networks when it is created (``attach``, by the container
service, after the node's bridge gave it its namespace and ``eth0``): ``eth1``, ``eth2``...
in the order of the task's networks. The bridge's ``eth0`` stays its way out and to the
node's DNS server, as Docker's ``docker_gwbridge`` is for overlay containers; a container
whose networks are all ``--internal`` keeps ``eth0`` for DNS but loses its default route
(no way out, as Docker's ``--internal`` drops the ``docker_gwbridge`` leg).

After an agent restart the container service hands back each surviving container with
its networks (``adopt``, from the container's own spec, which the runtime keeps): the
first map re-attaches it (idempotent: a missing veth or address is made again, an
internal-only container loses a default route a recreated namespace got back) and its
VIPs and names are kept up to date again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dockyard.agent.network.ingress import join_ingress
from dockyard.agent.network.netns import netns_path
from dockyard.agent.network.overlay import OverlayDevices, OverlayNetwork, Peer, mac_for
from dockyard.agent.network.vip import VirtualIP, apply_vips
from dockyard.v1.networks_pb2 import OverlayNetworkMap

__all__ = ["Joined", "OverlayManager"]

log = structlog.get_logger(__name__)

MAP_WAIT_SECONDS = 10.0
"""How long a container's attach waits for the map that names its network (the map of
a new task's network may reach the node just after the task)."""


@dataclass
class Joined:
    """One local container on overlays: its namespace, bridge address, networks."""

    netns: str
    bridge_address: str
    networks: list[tuple[str, str]] = field(default_factory=list)  # (network id, address)


class OverlayManager:
    """Args:
    devices: Makes the devices (the node's underlay address is set on the first map).
    """

    def __init__(self, devices: OverlayDevices | None = None) -> None:
        self._devices = devices
        self._maps: dict[str, OverlayNetworkMap] = {}
        self._ready: dict[int, OverlayNetwork] = {}  # VNI -> its network, devices made
        self._joined: dict[str, Joined] = {}
        self._adopted: set[str] = set()  # recovered, not re-attached since the restart
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()
        self.address = ""

    def set_address(self, address: str) -> None:
        """This node's underlay address (from the map); the devices are made for it.

        A loopback address means the agent shares its host with the controller (and
        maybe other agents: tests, ``deploy/local-cluster`` without ``--hosts``): one
        VXLAN device per VNI fits in a network namespace, so the agents of this host
        share one bridge per network instead, with no VXLAN (``OverlayDevices(shared=
        True)``; logged once). Containers of agents on other hosts are out of reach.
        """
        if not address or address == self.address:
            return
        self.address = address
        shared = ipaddress.IPv4Address(address).is_loopback
        self._devices = OverlayDevices(address, shared=shared)
        if shared:
            log.info("overlay.shared_host", address=address, reason="loopback host address")

    @property
    def meshes_ingress(self) -> bool:
        """Whether this node runs the routing mesh over the ingress overlay (its address
        is known and not loopback: the controller's scheduler decides alike,
        `controller/scheduler/nodeinfo.meshes_ingress`). Its tasks' ingress ports then
        take no port of the node; else they are published on it, as `mode=host`. Agents
        sharing a host have overlays over shared bridges, but no mesh (one nft table)."""
        return self._devices is not None and bool(self.address) and not self._devices.shared

    async def on_maps(self, maps: Sequence[OverlayNetworkMap]) -> None:
        """Apply the overlay part of a NetworkMap (see the module's docstring)."""
        async with self._lock:
            self._maps = {m.network.id: m for m in maps}
            if self._devices is not None:
                await self._apply_maps()
            else:  # overlays off here: no interface to come back to
                for container_id in self._adopted:
                    self._joined.pop(container_id, None)
                self._adopted.clear()
        async with self._changed:
            self._changed.notify_all()

    async def _apply_maps(self) -> None:
        assert self._devices is not None
        for overlay in self._maps.values():
            network = _network(overlay)
            if network.vni not in self._ready:
                await self._devices.ensure(network)
                self._ready[network.vni] = network
            await self._devices.set_peers(network, _peers(overlay))
        await self._reattach_adopted()
        await self._remove_unused()
        await self._apply_vips()

    async def _remove_unused(self) -> None:
        assert self._devices is not None
        wanted = {m.network.vni for m in self._maps.values()}
        in_use = {
            vni
            for joined in self._joined.values()
            for network_id, _ in joined.networks
            if (vni := self._vni_of(network_id)) is not None
        }
        for vni in sorted(self._ready.keys() - wanted - in_use):
            await self._devices.remove(self._ready.pop(vni))

    def _vni_of(self, network_id: str) -> int | None:
        overlay = self._maps.get(network_id)
        return overlay.network.vni if overlay is not None else None

    async def attach(
        self,
        container_id: str,
        netns_path: str,
        bridge_address: str,
        networks: Sequence[tuple[str, str]],
    ) -> None:
        """Give the container an interface on each ``(network id, address)``.

        Raises:
            RuntimeError: a network's map did not arrive in time, or netlink failed.
        """
        netns = Path(netns_path).name
        joined = Joined(netns, bridge_address)
        attached: list[OverlayNetwork] = []
        for index, (network_id, address) in enumerate(networks, start=1):
            overlay = await self._wait_for(network_id)
            if overlay is None:
                log.info("overlay.skipped", container_id=container_id, network=network_id)
                return
            network = _network(overlay)
            assert self._devices is not None
            async with self._lock:
                if network.vni not in self._ready:
                    await self._devices.ensure(network)
                    self._ready[network.vni] = network
                await self._devices.attach(network, netns, f"eth{index}", address)
            joined.networks.append((network_id, address))
            attached.append(network)
        await self._isolate_if_internal(netns, attached)
        self._joined[container_id] = joined
        async with self._lock:
            await self._apply_vips([container_id])

    def adopt(
        self,
        container_id: str,
        netns_path: str,
        bridge_address: str,
        networks: Sequence[tuple[str, str]],
    ) -> None:
        """A container that survived an agent restart, on ``(network id, address)`` each:
        known again at once (its DNS names), re-attached and given its VIPs by the next
        map (see the module's docstring)."""
        if not networks:
            return
        self._joined[container_id] = Joined(Path(netns_path).name, bridge_address, list(networks))
        self._adopted.add(container_id)
        log.info("overlay.adopted", container_id=container_id, networks=len(networks))

    async def _reattach_adopted(self) -> None:
        assert self._devices is not None
        for container_id in sorted(self._adopted):
            joined = self._joined.get(container_id)
            if joined is None or not await asyncio.to_thread(netns_path(joined.netns).exists):
                self._joined.pop(container_id, None)  # removed meanwhile
                self._adopted.discard(container_id)
                continue
            try:
                await self._join(joined)
            except RuntimeError as exc:  # tried again with the next map
                log.warning("overlay.reattach_failed", container_id=container_id, error=str(exc))
                continue
            self._adopted.discard(container_id)

    async def _join(self, joined: Joined) -> None:
        """Re-attach an adopted container to each of its networks with a map here."""
        assert self._devices is not None
        networks = []
        for index, (network_id, address) in enumerate(joined.networks, start=1):
            overlay = self._maps.get(network_id)
            if overlay is None:  # no local task on it any more: its task is ending
                continue
            network = _network(overlay)
            await self._devices.attach(network, joined.netns, f"eth{index}", address)
            networks.append(network)
        if networks and len(networks) == len(joined.networks):
            await self._isolate_if_internal(joined.netns, networks)

    async def _isolate_if_internal(self, netns: str, networks: Sequence[OverlayNetwork]) -> None:
        # On an internal and a normal network at once, the normal one's way out wins
        # (as Docker's: the container keeps its docker_gwbridge leg). The ingress network
        # counts for neither: the mesh's replies go to a node's address on it.
        networks = [n for n in networks if not n.ingress]
        if networks and all(n.internal for n in networks):
            assert self._devices is not None
            await self._devices.isolate(netns)

    async def _wait_for(self, network_id: str) -> OverlayNetworkMap | None:
        """The network's map once it arrived; None when overlays are off here."""
        deadline = time.monotonic() + MAP_WAIT_SECONDS
        async with self._changed:
            while network_id not in self._maps or not self.address:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no map for overlay network {network_id} yet")
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    continue
            return self._maps[network_id] if self._devices is not None else None

    def forget(self, container_id: str) -> None:
        """The container is gone (its namespace, and so its interfaces, with it)."""
        self._joined.pop(container_id, None)
        self._adopted.discard(container_id)

    def network_map(self, network_id: str) -> OverlayNetworkMap | None:
        """The latest map of one overlay network (None: not on this node's map)."""
        return self._maps.get(network_id)

    def subnets(self) -> list[str]:
        """The subnets of the overlay networks of the latest map (a node's user-defined
        networks must not overlap them)."""
        return [m.network.subnet for m in self._maps.values() if m.network.subnet]

    def names_by_client(self) -> dict[str, dict[str, list[str]]]:
        """Bridge address of each local overlay container -> the names it may resolve
        (those of its networks only), for the node's DNS server."""
        scoped: dict[str, dict[str, list[str]]] = {}
        for joined in self._joined.values():
            # The ingress network (the mesh's) names nothing and scopes nothing: a task
            # on it alone resolves what a bridge container does.
            named = [
                overlay
                for network_id, _ in joined.networks
                if not _is_ingress(overlay := self._maps.get(network_id))
            ]
            if not named:
                continue
            records: dict[str, list[str]] = {}
            for overlay in named:
                for name in overlay.names if overlay is not None else ():
                    records.setdefault(name.name, []).extend(name.addresses)
            if joined.bridge_address:
                scoped[joined.bridge_address] = records
        return scoped

    def isolated_clients(self) -> set[str]:
        """Bridge addresses of the local containers on ``--internal`` networks only: the
        node's DNS server forwards none of their queries upstream."""
        isolated = set()
        for joined in self._joined.values():
            maps = [self._maps.get(network_id) for network_id, _ in joined.networks]
            named = [m for m in maps if not _is_ingress(m)]  # the mesh's counts for neither
            if (
                joined.bridge_address
                and named
                and all(m and m.network.spec.internal for m in named)
            ):
                isolated.add(joined.bridge_address)
        return isolated

    async def _apply_vips(self, only: Sequence[str] | None = None) -> None:
        for container_id in list(only if only is not None else self._joined):
            joined = self._joined.get(container_id)
            if joined is None:
                continue
            vips = {
                name.vip: VirtualIP(name.vip, tuple(name.backends))
                for network_id, _ in joined.networks
                if (overlay := self._maps.get(network_id)) is not None
                for name in overlay.names
                if name.vip
            }
            try:
                await apply_vips(joined.netns, vips.values())
            except RuntimeError as exc:
                if not await asyncio.to_thread(netns_path(joined.netns).exists):
                    self._joined.pop(container_id, None)  # removed meanwhile
                    continue
                log.warning("overlay.vips_failed", container_id=container_id, error=str(exc))

    async def join_ingress(self, maps: Sequence[OverlayNetworkMap], address: str) -> bool:
        """Give this node ``address`` on the ingress network (its map among ``maps``,
        applied by ``on_maps``): True when the routing mesh can run over it here (False:
        no ingress network or address, or overlays are off on this node).

        Raises:
            RuntimeError: netlink failed.
        """
        overlay = next((m for m in maps if m.network.spec.ingress), None)
        devices = self._devices
        # Agents sharing a host would share one mesh table and one ingress bridge: the
        # mesh keeps its host-gw fallback there.
        if overlay is None or not address or devices is None or devices.shared:
            return False
        network = _network(overlay)
        async with self._lock:
            if network.vni not in self._ready:
                return False  # its devices are not made yet (on_maps failed): next map
            await join_ingress(devices.netlink, network, address)
        return True

    async def stop(self) -> None:
        """The agent stops. Devices stay (running containers keep their networks), but
        on a shared host the bridges of this agent's networks that no container of any
        agent uses any more go: no other agent would remove them."""
        if self._devices is None or not self._devices.shared:
            return
        async with self._lock:
            for network in list(self._ready.values()):
                try:
                    await self._devices.remove(network)  # kept while a port is left
                except RuntimeError as exc:
                    log.warning("overlay.remove_failed", vni=network.vni, error=str(exc))
            self._ready.clear()

    async def close(self) -> None:
        """The node leaves the cluster: every overlay device goes (containers keep their
        namespace ends until they are removed; the next start makes the devices again).
        On a shared host, only this agent's bridges that no container uses."""
        if self._devices is not None and self._devices.shared:
            await self.stop()
        elif self._devices is not None:
            removed = await self._devices.remove_all()
            log.info("overlay.closed", removed=removed)


def _network(overlay: OverlayNetworkMap) -> OverlayNetwork:
    record = overlay.network
    return OverlayNetwork(
        record.id, record.vni, record.subnet, record.spec.internal, record.spec.ingress
    )


def _peers(overlay: OverlayNetworkMap) -> list[Peer]:
    return [Peer(e.address, mac_for(e.address), e.host) for e in overlay.endpoints]


def _is_ingress(overlay: OverlayNetworkMap | None) -> bool:
    return overlay is not None and overlay.network.spec.ingress
