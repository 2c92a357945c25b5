"""A node's subnet cannot capture the cluster's own addresses: the controller refuses a
fixed subnet that covers a controller's, etcd's or another node's address (naming it),
and an agent never routes a peer subnet that holds another peer's host, nor displaces a
route that is not its own (real etcd; real namespaces for the routes)."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import AsyncIterator

import pytest

from dockyard.agent.network.routes import PeerRoute, PeerRoutes
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.validation import ValidationError
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.store import Store
from dockyard.controller.subnets import CoversAddress, SubnetPool, protected_address
from dockyard.v1.dispatcher_pb2 import SessionHello
from dockyard.v1.types_pb2 import NodeDescription, NodeNetwork
from tests.network import test_routes as routes_tests
from tests.network.test_routes import LOCAL, Host, peer

# The namespace fixtures of the routes' tests (a host with an uplink, a bridge, iptables).
hosts = routes_tests.hosts
host = routes_tests.host
routes_marks = routes_tests.pytestmark


def fixed(subnet: str) -> NodeDescription:
    return NodeDescription(bridge_subnet=subnet, bridge_subnet_fixed=True)


def test_a_fixed_subnet_covering_a_protected_address_is_refused_by_name() -> None:
    pool = SubnetPool()
    guarded = [
        g
        for g in (
            protected_address("a controller", "10.40.0.5:7390"),
            protected_address("etcd", "http://10.41.0.9:2379"),
            protected_address("loopback", "127.0.0.1:7390"),
            protected_address("a name", "ctl.example:7390"),
        )
        if g
    ]
    assert [who for who, _ in guarded] == ["a controller", "etcd"]
    for subnet, who in (("10.40.0.0/24", "a controller"), ("10.41.0.0/16", "etcd")):
        with pytest.raises(CoversAddress, match=rf"{subnet} covers the address .* of {who}"):
            pool.assign("n1", NodeNetwork(), fixed(subnet), [], guarded)
    assert (
        pool.assign("n1", NodeNetwork(), fixed("10.42.0.0/24"), [], guarded).subnet
        == "10.42.0.0/24"
    )
    # The pool skips a block that holds one.
    small = SubnetPool("10.40.0.0/23", 24)
    got = small.assign(
        "n1", NodeNetwork(), NodeDescription(bridge_subnet="10.87.0.0/16"), [], guarded
    )
    assert got.subnet == "10.40.1.0/24"


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    store = Store([etcd.endpoint], "/guard")
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


async def test_registration_refuses_a_subnet_over_the_controller_or_another_node(
    store: Store,
) -> None:
    registry = NodeRegistry(store, SubnetPool(), lambda: ["10.50.0.1:7390", "10.51.0.2:2379"])
    honest = await registry.register(
        SessionHello(
            node_id="aaaaaaaaaaaaaaaaaaaa",
            name="honest",
            description=NodeDescription(bridge_subnet="10.87.0.0/16"),
        ),
        "ipv4:10.60.3.4:5000",
    )
    assert honest.network.address == "10.60.3.4"
    for subnet, whose in (
        ("10.50.0.0/16", "a controller or etcd endpoint"),
        ("10.51.0.0/24", "a controller or etcd endpoint"),
        ("10.60.0.0/16", "node aaaaaaaaaaaa"),
    ):
        with pytest.raises(ValidationError, match=rf"bridge_subnet.*covers .* of {whose}"):
            await registry.register(
                SessionHello(
                    node_id="bbbbbbbbbbbbbbbbbbbb", name="rogue", description=fixed(subnet)
                ),
                "ipv4:10.70.0.2:5000",
            )
    assert [n.spec.name for n in await registry.list_all()] == ["honest"]  # nothing written
    fine = await registry.register(
        SessionHello(
            node_id="bbbbbbbbbbbbbbbbbbbb", name="rogue", description=fixed("10.61.0.0/24")
        ),
        "ipv4:10.70.0.2:5000",
    )
    assert fine.network.subnet == "10.61.0.0/24"


def test_a_peer_subnet_holding_another_peers_host_is_not_routed() -> None:
    routes = PeerRoutes()
    local = ipaddress.IPv4Network(LOCAL)
    peers = [
        PeerRoute("good", "10.213.51.0/24", "192.168.77.2"),
        PeerRoute("rogue", "192.168.77.0/28", "192.168.77.3"),
    ]
    chosen = routes._choose(local, peers, [], set())
    assert [p.node_id for p, _, _ in chosen] == ["good"]


# A stale view of the routes: the kernel has one for the subnet that was not there when
# the agent looked (another daemon added it meanwhile). `ip route replace` would take it
# over; our routes are added (NLM_F_EXCL) and so never displace another's.
STALE_VIEW = """
import asyncio, json, sys
from dockyard.agent.network import routes as module
from dockyard.agent.network.routes import PeerRoute, PeerRoutes
hidden = sys.argv[1]
real = module._main_routes
async def stale():
    return [r for r in await real() if str(r.dst) != hidden]
module._main_routes = stale
peers = [PeerRoute(**p) for p in json.loads(sys.argv[2])]
done = asyncio.run(PeerRoutes().sync(sys.argv[3], peers))
print(json.dumps([p.node_id for p in done]))
"""


@routes_marks[0]
@routes_marks[1]
def test_a_route_made_after_the_agent_looked_is_not_replaced(host: Host) -> None:
    host.ip("route", "add", "10.213.60.0/24", "via", "192.168.77.9")
    before = host.routes()
    result = host.exec(
        sys.executable,
        "-c",
        STALE_VIEW,
        "10.213.60.0/24",
        json.dumps(
            [
                peer("rogue", "10.213.60.0/24", "192.168.77.2"),
                peer("good", "10.213.61.0/24", "192.168.77.3"),
            ]
        ),
        LOCAL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == ["good"]
    assert "10.213.60.0/24 via 192.168.77.9 dev up0" in before
    assert [r for r in host.routes() if r.startswith("10.213.60.0/24")] == [
        r for r in before if r.startswith("10.213.60.0/24")
    ]
    assert host.our_routes() == ["10.213.61.0/24 via 192.168.77.3 dev up0"]
