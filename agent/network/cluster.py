"""``ClusterNetwork``: applies the controller's network maps on this host.

A map (``NetworkMap``) names this node's bridge subnet, every other node's subnet with
the host address to route it through, and every service's name with its running tasks'
addresses. On each map, before the session reads its next message (so the tasks of the
assignment set that follows already get them):

- the bridge takes the assigned subnet (when it is not fixed);
- the node's DNS server (``ServiceDNS``) serves the bridge's gateway address, and its
  records become the map's services; bridge containers created from then on have it as
  their only nameserver (the rest of the names are forwarded to the host's resolvers).

Then, in a task of its own, ``PeerRoutes`` makes the routes and firewall rules exactly the
map's: the newest map replaces any not yet applied, and a slow ``iptables`` never holds up
the session.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence

import structlog

from dockyard.agent.network.bridge import BridgeNetwork
from dockyard.agent.network.dns import ServiceDNS
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.ingress_mesh import IngressMesh
from dockyard.agent.network.local_bridges import LocalBridges
from dockyard.agent.network.overlays import OverlayManager
from dockyard.agent.network.routes import PeerRoute, PeerRoutes
from dockyard.agent.runtime.base import LocalBridge
from dockyard.v1.dispatcher_pb2 import NetworkMap

__all__ = ["ClusterNetwork"]

log = structlog.get_logger(__name__)

RETRY_SECONDS = 5.0
UPSTREAM_TIMEOUT = 1.0
"""Seconds per upstream resolver: a few dead ones stay within a client's 5 s timeout."""


class ClusterNetwork:
    """Args:
    bridge: The agent's bridge network.
    routes: This host's routes to the other nodes (a test may pass its own).
    dns: The node's DNS server (a test may pass its own).
    route_peers: False: the host's routes and firewall are left alone (several agents
        on one host: `--no-peer-routes`); subnets and names are still applied.
    """

    def __init__(
        self,
        bridge: BridgeNetwork,
        routes: PeerRoutes | None = None,
        dns: ServiceDNS | None = None,
        route_peers: bool = True,
        overlays: OverlayManager | None = None,
        local: LocalBridges | None = None,
    ) -> None:
        self.bridge = bridge
        self.local = local
        self.overlays = overlays or OverlayManager()
        self.routes = routes or PeerRoutes()
        self.route_peers = route_peers
        self.dns = dns or ServiceDNS(timeout=UPSTREAM_TIMEOUT)
        self.mesh = IngressMesh(held_here=bridge.holds_port)
        self._dns_address = ""
        self._latest: NetworkMap | None = None
        self._wakeup = asyncio.Event()
        self._service_records: dict[str, list[str]] = {}
        self._local_records: dict[str, list[str]] = {}
        self._local_names: dict[str, dict[str, list[str]]] = {}
        self._local_dns: dict[str, tuple[str, ServiceDNS]] = {}
        """User-defined network id -> its gateway and the DNS server there."""

    async def on_map(self, network_map: NetworkMap) -> None:
        """Take a map from the session: subnet and names now, routes soon (see :meth:`run`)."""
        try:
            if network_map.subnet:
                await self.bridge.use_subnet(network_map.subnet)
            await self._serve_dns()
            self._service_records = {s.name: list(s.addresses) for s in network_map.services}
            self._set_records()
        except (NetworkError, ValueError, TimeoutError) as exc:
            log.error("cluster_network.apply_failed", error=str(exc))
        try:
            self.overlays.set_address(network_map.address)
            await self.overlays.on_maps(network_map.overlays)
        except Exception as exc:
            log.error("cluster_network.overlays_failed", error=str(exc), exc_info=True)
        self.scope_names()
        self._latest = network_map
        self._wakeup.set()

    def scope_names(self) -> None:
        """Give the DNS server the names each overlay container may resolve."""
        self.dns.set_scoped(self.overlays.names_by_client(), self.overlays.isolated_clients())

    async def set_local_networks(self, networks: Sequence[LocalBridge]) -> None:
        """The node's user-defined networks are ``networks``: their isolation, and a DNS
        server of each on its gateway (its containers' nameserver), which answers the
        names of that network's containers only.

        Raises:
            NetworkError: nft refused the isolation table.
        """
        if self.local is None:
            return
        await self.local.declare(networks)
        wanted = {n.network_id: _gateway(n.subnet) for n in networks}
        internal = {n.network_id for n in networks if n.internal}
        for network_id in list(self._local_dns):
            if wanted.get(network_id) != self._local_dns[network_id][0]:
                await self._local_dns.pop(network_id)[1].stop()
                self.local.nameservers.pop(network_id, None)
        for network_id, gateway in wanted.items():
            if network_id in self._local_dns:
                continue
            # An internal network's containers have no way out: nothing is forwarded
            # upstream for them (unknown names: SERVFAIL), as for internal overlays.
            upstreams: list[tuple[str, int]] | None = [] if network_id in internal else None
            server = ServiceDNS(upstreams, timeout=UPSTREAM_TIMEOUT)
            try:
                await server.start(gateway)
            except NetworkError as exc:
                log.error("cluster_network.local_dns_failed", error=str(exc))
                continue
            server.set_records(self._local_names.get(network_id, {}))
            self._local_dns[network_id] = (gateway, server)
            self.local.nameservers[network_id] = gateway

    def set_local_names(self, names: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """Network id -> the names of its running containers (and their aliases), each
        answered by that network's DNS server only."""
        self._local_names = {
            network_id: {name: list(addresses) for name, addresses in records.items()}
            for network_id, records in names.items()
        }
        for network_id, (_, server) in self._local_dns.items():
            try:
                server.set_records(self._local_names.get(network_id, {}))
            except ValueError as exc:
                log.error("cluster_network.local_names_failed", error=str(exc))

    async def set_local_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Names of this node's own containers (Docker API networks: container names and
        aliases) beside the map's services, which win a clash; serves DNS if not yet."""
        self._local_records = {name: list(addresses) for name, addresses in records.items()}
        try:
            await self._serve_dns()
            self._set_records()
        except (NetworkError, ValueError, OSError) as exc:
            log.error("cluster_network.local_records_failed", error=str(exc))

    async def serve_dns(self) -> None:
        """Serve the node's DNS now (before any map): bridge containers created from
        then on get it as their nameserver."""
        try:
            await self._serve_dns()
        except (NetworkError, ValueError, OSError) as exc:
            log.error("cluster_network.dns_failed", error=str(exc))

    def _set_records(self) -> None:
        self.dns.set_records({**self._local_records, **self._service_records})

    async def _serve_dns(self) -> None:
        """The DNS server on the bridge's gateway (again, when the subnet changed)."""
        gateway = self.bridge.config.gateway
        if self._dns_address == gateway:
            return
        self.bridge.nameserver = ""
        if self._dns_address:
            await self.dns.stop()
            self._dns_address = ""
        await self.dns.start(gateway)
        self._dns_address = self.bridge.nameserver = gateway

    async def _join_ingress(self, network_map: NetworkMap) -> bool:
        """This node's address on the ingress overlay: True when the mesh runs over it."""
        try:
            return await self.overlays.join_ingress(
                network_map.overlays, network_map.ingress_address
            )
        except RuntimeError as exc:
            raise NetworkError(f"ingress network: {exc}") from exc

    async def close(self) -> None:
        # Overlay devices stay, as routes do: running containers keep their networks
        # while the agent is down, and the next start finds the devices as they are
        # (but for a shared host's bridges no container uses: OverlayManager.stop).
        await self.overlays.stop()
        await self.dns.stop()
        for _, server in self._local_dns.values():
            await server.stop()
        self._local_dns.clear()
        self._dns_address = self.bridge.nameserver = ""
        await self.mesh.close()

    async def run(self) -> None:
        """Apply every map that arrives, retrying a failed one, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            network_map = self._latest
            if network_map is None:
                continue
            try:
                await self.apply(network_map)
            except (NetworkError, ValueError, TimeoutError) as exc:
                log.error("cluster_network.retrying", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                self._wakeup.set()

    async def apply(self, network_map: NetworkMap) -> None:
        """The routes and rules to the other nodes."""
        peers = [
            PeerRoute(node_id=p.node_id, subnet=p.subnet, via=p.address) for p in network_map.peers
        ]
        over_ingress = await self._join_ingress(network_map)
        if over_ingress:
            await self.mesh.apply(network_map.ingress_address, network_map.ingress, overlay=True)
        if not self.route_peers:
            log.info(
                "cluster_network.applied",
                subnet=self.bridge.config.subnet,
                peers=len(peers),
                routed=[],
                peer_routes="off",
                services=len(network_map.services),
            )
            return
        routed = await self.routes.sync(self.bridge.config.subnet, peers)
        if not over_ingress:
            # No ingress overlay here (agents sharing a host, on a loopback address): the mesh
            # reaches other nodes' tasks over these routes, from the bridge's gateway
            # (agents sharing a host have no peer routes, and so no mesh).
            await self.mesh.apply(self.bridge.config.gateway, network_map.ingress)
        log.info(
            "cluster_network.applied",
            subnet=self.bridge.config.subnet,
            peers=len(peers),
            routed=[r.subnet for r in routed],
            services=len(network_map.services),
            ingress=len(network_map.ingress),
        )


def _gateway(subnet: str) -> str:
    return str(next(ipaddress.IPv4Network(subnet).hosts()))
