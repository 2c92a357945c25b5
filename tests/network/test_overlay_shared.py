"""Overlay networks for agents that share one host (agent/network/overlay.py, ``shared``):
two agents' devices in one namespace, as ``deploy/local-cluster`` without ``--hosts``
runs them, share one bridge per network (named by the network's ID) and no VXLAN.

Containers of both agents reach each other on a shared network and nothing across
networks; one agent removing a network keeps the bridge while the other's container is
plugged into it; two clusters' networks with one VNI get two bridges. One "host"
namespace (the overlay tests' topology) stands for the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest
from pyroute2 import NetNS

from dockyard.agent.network.overlay import (
    OverlayDevices,
    OverlayNetwork,
    Peer,
    mac_for,
    shared_bridge_name,
    vxlan_name,
)
from dockyard.agent.network.overlays import OverlayManager
from tests.network.overlay_topology import Topology, unavailable

RED = OverlayNetwork("red0000000000000000000001", 4096, "10.243.1.0/24")
BLUE = OverlayNetwork("blue000000000000000000001", 4097, "10.243.2.0/24")
OTHER_RED = OverlayNetwork("red0000000000000000000002", 4096, "10.243.1.0/24")  # another cluster


@pytest.fixture
def machine() -> Iterator[Topology]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    topology = Topology()
    try:
        topology.netns(topology.host("a"))
        yield topology
    finally:
        topology.down()


def links(topology: Topology) -> set[str]:
    shown = topology.run(topology.host("a"), "ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in shown.splitlines()}


def agent(topology: Topology) -> OverlayDevices:
    return OverlayDevices("127.0.0.1", netlink=partial(NetNS, topology.host("a")), shared=True)


async def test_agents_on_one_host_share_a_bridge_per_network(machine: Topology) -> None:
    one, two = agent(machine), agent(machine)
    for devices in (one, two):
        await devices.ensure(RED)
        await devices.ensure(BLUE)
        # no VXLAN: the peers' entries have nowhere to go, and need none
        await devices.set_peers(RED, [Peer("10.243.1.3", mac_for("10.243.1.3"), "127.0.0.1")])
    made = links(machine)
    assert {shared_bridge_name(RED.network_id), shared_bridge_name(BLUE.network_id)} <= made
    assert vxlan_name(RED.vni) not in made

    red_1, red_2 = machine.container("red-1"), machine.container("red-2")
    blue_2 = machine.container("blue-2")
    await one.attach(RED, red_1, "eth1", "10.243.1.2")
    await two.attach(RED, red_2, "eth1", "10.243.1.3")
    await two.attach(BLUE, blue_2, "eth1", "10.243.2.3")
    assert machine.reaches(red_1, "10.243.1.3")  # agent one's container -> agent two's
    assert machine.reaches(red_2, "10.243.1.2")
    assert not machine.reaches(red_1, "10.243.2.3")  # another network: no way there

    # Agent one leaves red: the bridge stays for agent two's container.
    await one.detach(red_1, "eth1")
    await one.remove(RED)
    assert shared_bridge_name(RED.network_id) in links(machine)
    assert machine.reaches(red_2, "10.243.1.3")
    # Agent two's last container goes: so does the bridge, with the last agent's remove.
    await two.detach(red_2, "eth1")
    await two.remove(RED)
    assert shared_bridge_name(RED.network_id) not in links(machine)
    # A container attached after another agent removed the bridge gets it made again.
    await one.attach(RED, red_1, "eth1", "10.243.1.2")
    assert shared_bridge_name(RED.network_id) in links(machine)


async def test_two_clusters_networks_with_one_vni_do_not_meet(machine: Topology) -> None:
    ours, theirs = agent(machine), agent(machine)
    await ours.ensure(RED)
    await theirs.ensure(OTHER_RED)
    assert shared_bridge_name(RED.network_id) != shared_bridge_name(OTHER_RED.network_id)
    mine, other = machine.container("mine"), machine.container("other")
    await ours.attach(RED, mine, "eth1", "10.243.1.2")
    await theirs.attach(OTHER_RED, other, "eth1", "10.243.1.3")
    assert not machine.reaches(mine, "10.243.1.3")


def test_agents_sharing_a_host_do_not_mesh_ingress_ports() -> None:
    """They have overlays (shared bridges) but no routing mesh: an ingress port is then
    published on its task's node, as the scheduler expects of a loopback node."""
    shared, alone = OverlayManager(), OverlayManager()
    assert not shared.meshes_ingress and not alone.meshes_ingress  # no map yet
    shared.set_address("127.0.0.1")
    alone.set_address("10.20.30.40")
    assert not shared.meshes_ingress
    assert alone.meshes_ingress
