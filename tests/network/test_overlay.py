"""Overlay networks' data path with the kernel's real VXLAN (agent/network/overlay.py):
two hosts on two L2 segments behind a router, containers on two networks, forwarding
entries pushed (no multicast, no learning). One topology for the module.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from pyroute2 import NetNS

from dockyard.agent.network.overlay import (
    OverlayDevices,
    OverlayNetwork,
    Peer,
    bridge_name,
    mac_for,
)
from dockyard.agent.network.vip import VirtualIP, apply_vips
from tests.network.overlay_topology import Topology, unavailable

RED = OverlayNetwork("red", 5001, "10.242.1.0/24")
BLUE = OverlayNetwork("blue", 5002, "10.242.2.0/24")


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Topology, dict[str, OverlayDevices]]]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    topology = Topology()
    try:
        topology.up()
        devices = {
            name: OverlayDevices(
                topology.underlay(name), netlink=partial(NetNS, topology.host(name))
            )
            for name in ("a", "b")
        }
        yield topology, devices
    finally:
        topology.down()


async def test_containers_reach_across_segments_only_on_shared_networks(
    world: tuple[Topology, dict[str, OverlayDevices]],
) -> None:
    topology, devices = world
    a, b = devices["a"], devices["b"]
    for node in (a, b):
        await node.ensure(RED)
        await node.ensure(BLUE)
    red_a, red_b = topology.container("red-a"), topology.container("red-b")
    blue_b, both_a = topology.container("blue-b"), topology.container("both-a")
    await a.attach(RED, red_a, "eth1", "10.242.1.2")
    await b.attach(RED, red_b, "eth1", "10.242.1.3")
    await b.attach(BLUE, blue_b, "eth1", "10.242.2.3")
    await a.attach(RED, both_a, "eth1", "10.242.1.4")
    await a.attach(BLUE, both_a, "eth2", "10.242.2.4")
    red = [
        Peer("10.242.1.2", mac_for("10.242.1.2"), topology.underlay("a")),
        Peer("10.242.1.3", mac_for("10.242.1.3"), topology.underlay("b")),
        Peer("10.242.1.4", mac_for("10.242.1.4"), topology.underlay("a")),
    ]
    blue = [
        Peer("10.242.2.3", mac_for("10.242.2.3"), topology.underlay("b")),
        Peer("10.242.2.4", mac_for("10.242.2.4"), topology.underlay("a")),
    ]
    for node in (a, b):
        await node.set_peers(RED, red)
        await node.set_peers(BLUE, blue)

    assert topology.reaches(red_a, "10.242.1.3")  # host A -> host B, through the router
    assert topology.reaches(both_a, "10.242.2.3")  # on both: reaches blue ...
    assert topology.reaches(both_a, "10.242.1.3")  # ... and red
    assert not topology.reaches(red_a, "10.242.2.3")  # red never reaches blue
    assert not topology.reaches(blue_b, "10.242.1.2")
    # The router saw only VXLAN between the hosts' own addresses, never a container's.
    routes = topology.run(topology.router, "ip", "-4", "route").stdout
    assert "10.242." not in routes

    # A peer that leaves: its entries go, and it is no longer reached.
    await a.set_peers(RED, [p for p in red if p.address != "10.242.1.3"])
    assert not topology.reaches(red_a, "10.242.1.3")
    await a.set_peers(RED, red)
    assert topology.reaches(red_a, "10.242.1.3")

    await b.detach(red_b, "eth1")
    assert not topology.reaches(red_a, "10.242.1.3")

    assert await a.remove_all() == [RED.vni, BLUE.vni]
    assert bridge_name(RED.vni) not in topology.run(topology.host("a"), "ip", "link").stdout
    assert not topology.reaches(both_a, "10.242.2.3")


async def test_a_vip_spreads_across_hosts_and_follows_its_backends(
    world: tuple[Topology, dict[str, OverlayDevices]], tmp_path: Path
) -> None:
    topology, devices = world
    net = OverlayNetwork("green", 5003, "10.242.3.0/24")
    vip = "10.242.3.250"
    backends = {"web-a": ("a", "10.242.3.2"), "web-b": ("b", "10.242.3.3")}
    for node in devices.values():
        await node.ensure(net)
    client = topology.container("client")
    await devices["a"].attach(net, client, "eth1", "10.242.3.9")
    servers = []
    try:
        for name, (host, address) in backends.items():
            netns = topology.container(name)
            await devices[host].attach(net, netns, "eth1", address)
            root = tmp_path / name
            root.mkdir()
            (root / "who").write_text(name)
            servers.append(serve(netns, root))
        peers = [Peer(a, mac_for(a), topology.underlay(h)) for h, a in backends.values()]
        peers.append(Peer("10.242.3.9", mac_for("10.242.3.9"), topology.underlay("a")))
        for node in devices.values():
            await node.set_peers(net, peers)
        await apply_vips(client, [VirtualIP(vip, ("10.242.3.2", "10.242.3.3"))])

        answers = {fetch(topology, client, vip) for _ in range(30)}
        assert answers == {"web-a", "web-b"}  # both hosts serve the one address

        await apply_vips(client, [VirtualIP(vip, ("10.242.3.2",))])
        assert {fetch(topology, client, vip) for _ in range(10)} == {"web-a"}

        await apply_vips(client, [VirtualIP(vip, ())])
        refused = topology.run(
            client, "timeout", "2", "busybox", "wget", "-qO-", f"http://{vip}/who"
        )
        assert refused.returncode != 0 and "refused" in refused.stderr.lower()
    finally:
        for server in servers:
            server.kill()
            server.wait()
        await devices["a"].remove(net)
        await devices["b"].remove(net)


def serve(netns: str, root: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h", str(root)]
    )
    time.sleep(0.2)
    return server


def fetch(topology: Topology, netns: str, address: str) -> str:
    got = topology.run(netns, "timeout", "3", "busybox", "wget", "-qO-", f"http://{address}/who")
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()
