"""`--no-peer-routes`: an agent that shares its host with others applies the map's
subnet and names but never syncs the host's routes and DOCKYARD-PEERS chains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dockyard.agent.network.bridge import BridgeConfig, BridgeNetwork
from dockyard.agent.network.cluster import ClusterNetwork
from dockyard.agent.network.routes import PeerRoute, PeerRoutes
from dockyard.v1.dispatcher_pb2 import NetworkMap


class RecordingRoutes(PeerRoutes):
    """Records syncs instead of touching this host."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[tuple[str, list[str]]] = []

    async def sync(self, local_subnet: str, peers: Sequence[PeerRoute]) -> list[PeerRoute]:
        self.syncs.append((local_subnet, [p.subnet for p in peers]))
        return []


def _map() -> NetworkMap:
    network_map = NetworkMap()
    network_map.peers.add(node_id="n2", subnet="10.213.7.0/24", address="192.0.2.7")
    return network_map


async def test_peer_routes_off_never_syncs_the_hosts_routes(tmp_path: Path) -> None:
    bridge = BridgeNetwork(tmp_path, BridgeConfig(bridge="dytoff0", subnet="10.213.6.0/24"))
    routes = RecordingRoutes()
    await ClusterNetwork(bridge, routes=routes, route_peers=False).apply(_map())
    assert routes.syncs == []


async def test_peer_routes_on_syncs_the_maps_peers(tmp_path: Path) -> None:
    bridge = BridgeNetwork(tmp_path, BridgeConfig(bridge="dytoff0", subnet="10.213.6.0/24"))
    routes = RecordingRoutes()
    await ClusterNetwork(bridge, routes=routes).apply(_map())
    assert routes.syncs == [("10.213.6.0/24", ["10.213.7.0/24"])]
