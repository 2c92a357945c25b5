"""``ClusterNetwork``: applies the controller's network maps on this host.

A map (``NetworkMap``) names this node's bridge subnet and every other node's subnet with
the host address to route it through. The bridge takes the assigned subnet (when it is
not fixed), and ``PeerRoutes`` makes the routes and firewall rules exactly the map's.
Maps are applied one at a time in a task of their own, the newest replacing any not yet
applied, so a slow ``iptables`` never holds up the session that delivered them.
"""

from __future__ import annotations

import asyncio

import structlog

from dockyard.agent.network.bridge import BridgeNetwork
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.routes import PeerRoute, PeerRoutes
from dockyard.v1.dispatcher_pb2 import NetworkMap

__all__ = ["ClusterNetwork"]

log = structlog.get_logger(__name__)

RETRY_SECONDS = 5.0


class ClusterNetwork:
    """Args:
    bridge: The agent's bridge network.
    routes: This host's routes to the other nodes (a test may pass its own).
    """

    def __init__(self, bridge: BridgeNetwork, routes: PeerRoutes | None = None) -> None:
        self.bridge = bridge
        self.routes = routes or PeerRoutes()
        self.routed: list[PeerRoute] = []
        self._latest: NetworkMap | None = None
        self._wakeup = asyncio.Event()

    def on_map(self, network_map: NetworkMap) -> None:
        """Take a map from the session; it is applied soon (see :meth:`run`)."""
        self._latest = network_map
        self._wakeup.set()

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
                log.error("cluster network not applied; retrying", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                self._wakeup.set()

    async def apply(self, network_map: NetworkMap) -> None:
        """The assigned subnet, then the routes to the other nodes."""
        if network_map.subnet:
            await self.bridge.use_subnet(network_map.subnet)
        peers = [PeerRoute(node_id=p.node_id, subnet=p.subnet, via=p.address)
                 for p in network_map.peers]  # fmt: skip
        self.routed = await self.routes.sync(self.bridge.config.subnet, peers)
        log.info("cluster network applied", subnet=self.bridge.config.subnet,
                 peers=len(peers), routed=[r.subnet for r in self.routed])  # fmt: skip
