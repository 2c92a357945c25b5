"""The agent's overlay manager (agent/network/overlays.py) on the kernel's real devices:
a container that survives an agent restart gets its VIPs and names kept up to date again,
and a container on ``--internal`` networks only has no way out. Namespaces stand in for
the hosts and containers (tests/network/overlay_topology.py); one topology per module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import partial

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from pyroute2 import NetNS

from dockyard.agent.containers.backends import EngineImages
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.network.dns import ServiceDNS
from dockyard.agent.network.overlay import OverlayDevices
from dockyard.agent.network.overlays import OverlayManager
from dockyard.agent.network.vip import TABLE
from dockyard.agent.runtime.base import ContainerSpec
from dockyard.agent.runtime.hollow import HollowRuntime
from dockyard.v1.networks_pb2 import (
    Network,
    NetworkSpec,
    OverlayEndpoint,
    OverlayName,
    OverlayNetworkMap,
)
from tests.agent.test_container_seam import RecordingNetwork
from tests.network.overlay_topology import Topology, sh, unavailable
from tests.ports import free_port

HOST_A = "10.241.1.10"  # host A's own address: outside every overlay


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    topology = Topology()
    try:
        yield topology.up()
    finally:
        topology.down()


def manager(topology: Topology) -> OverlayManager:
    """A fresh manager for host A: what an agent (re)start makes."""
    devices = OverlayDevices(HOST_A, netlink=partial(NetNS, topology.host("a")))
    overlays = OverlayManager(devices)
    overlays.address = HOST_A  # set_address would open the devices in this namespace
    return overlays


def container(topology: Topology, name: str, number: int) -> tuple[str, str]:
    """A container namespace on host A with the node bridge's part: ``eth0`` with a
    default route via the host (the gateway, where the node's DNS server listens)."""
    netns = topology.container(name)
    host, inside = f"10.243.{number}.1", f"10.243.{number}.2"
    sh("ip", "-n", topology.host("a"), "link", "add", f"br{number}", "type", "veth",
       "peer", "name", "eth0", "netns", netns)  # fmt: skip
    sh("ip", "-n", topology.host("a"), "addr", "add", f"{host}/24", "dev", f"br{number}")
    sh("ip", "-n", topology.host("a"), "link", "set", f"br{number}", "up")
    sh("ip", "-n", netns, "addr", "add", f"{inside}/24", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")
    sh("ip", "-n", netns, "route", "add", "default", "via", host)
    return netns, inside


def network_map(
    network_id: str,
    vni: int,
    number: int,
    locals_: list[str],
    backends: list[str] = [],  # noqa: B006 - never mutated
    internal: bool = False,
) -> OverlayNetworkMap:
    subnet = f"10.242.{number}"
    record = Network(
        id=network_id, vni=vni, subnet=f"{subnet}.0/24", spec=NetworkSpec(internal=internal)
    )
    endpoints = [OverlayEndpoint(address=a, host=HOST_A) for a in locals_]
    endpoints += [OverlayEndpoint(address=a, host="10.241.2.10") for a in backends]
    names = [OverlayName(name="web", addresses=[f"{subnet}.250"], vip=f"{subnet}.250")]
    names[0].backends.extend(backends)
    return OverlayNetworkMap(network=record, endpoints=endpoints, names=names)


def vip_backends(topology: Topology, netns: str) -> set[str]:
    """The backends every VIP of the container's nftables table DNATs to."""
    listed = topology.run(netns, "nft", "list", "table", "ip", TABLE, check=True).stdout
    found: set[str] = set()
    for line in listed.splitlines():
        if "dnat to" in line:
            found.update(re.findall(r"\d+\.\d+\.\d+\.\d+", line.split("dnat to", 1)[1]))
    return found


async def test_a_container_that_survives_a_restart_follows_its_vips_and_names(
    topology: Topology,
) -> None:
    netns, bridge_address = container(topology, "survivor", 10)
    networks = [("green", "10.242.11.9")]
    before = manager(topology)
    await before.on_maps([network_map("green", 5101, 11, ["10.242.11.9"], ["10.242.11.2"])])
    await before.attach("c1", f"/var/run/netns/{netns}", bridge_address, networks)
    assert vip_backends(topology, netns) == {"10.242.11.2"}

    # The agent restarts: a new manager, the devices and the container as they were.
    after = manager(topology)
    after.adopt("c1", f"/var/run/netns/{netns}", bridge_address, networks)
    scaled = ["10.242.11.2", "10.242.11.3"]
    await after.on_maps([network_map("green", 5101, 11, ["10.242.11.9"], scaled)])

    assert vip_backends(topology, netns) == set(scaled)
    assert after.names_by_client()[bridge_address] == {"web": ["10.242.11.250"]}
    assert topology.reaches(netns, "10.242.11.9")  # its interface is still there

    after.forget("c1")
    assert bridge_address not in after.names_by_client()


class RecordingOverlays(OverlayManager):
    def __init__(self) -> None:
        super().__init__()
        self.adopted: list[tuple[str, str, str, list[tuple[str, str]]]] = []

    def adopt(
        self,
        container_id: str,
        netns_path: str,
        bridge_address: str,
        networks: Sequence[tuple[str, str]],
    ) -> None:
        self.adopted.append((container_id, netns_path, bridge_address, list(networks)))


async def test_the_container_service_hands_back_its_overlay_containers_on_start() -> None:
    runtime = HollowRuntime(start_delay=0)
    first = ContainerService(runtime, EngineImages(), None, None, RecordingNetwork())
    networks = (("green", "10.242.11.9"), ("blue", "10.242.12.9"))
    specs = [
        ContainerSpec(id="", name=name, image="busybox", lower_dirs=(), network="bridge",
                      overlays=overlays, command=["sleep", "5"])
        for name, overlays in (("on-overlays", networks), ("bridge-only", ()))
    ]  # fmt: skip
    views = [await first.create(ContainerRequest(s, parse_reference("busybox"))) for s in specs]

    overlays = RecordingOverlays()  # the agent restarts over the same runtime
    again = ContainerService(
        runtime, EngineImages(), None, None, RecordingNetwork(), overlays=overlays
    )
    await again.start()
    assert overlays.adopted == [(views[0].info.id, "/run/netns/x", "10.0.0.2", list(networks))]
    await again.close()


async def test_internal_networks_have_no_way_out(topology: Topology) -> None:
    overlays = manager(topology)
    maps = [
        network_map("quiet", 5102, 12, ["10.242.12.2", "10.242.12.3"], internal=True),
        network_map("loud", 5103, 13, ["10.242.13.2", "10.242.13.3"]),
    ]
    await overlays.on_maps(maps)
    shut, shut_address = container(topology, "internal", 20)
    open_, open_address = container(topology, "normal", 21)
    both, both_address = container(topology, "both", 22)
    await overlays.attach(
        "c-in", f"/var/run/netns/{shut}", shut_address, [("quiet", "10.242.12.2")]
    )
    await overlays.attach(
        "c-out", f"/var/run/netns/{open_}", open_address, [("loud", "10.242.13.2")]
    )
    await overlays.attach(
        "c-both",
        f"/var/run/netns/{both}",
        both_address,
        [("quiet", "10.242.12.3"), ("loud", "10.242.13.3")],
    )

    assert overlays.isolated_clients() == {shut_address}  # its DNS: no upstream
    assert not topology.reaches(shut, HOST_A)  # nothing outside its overlay ...
    assert topology.reaches(shut, "10.242.12.3")  # ... but its network
    assert topology.reaches(shut, "10.243.20.1")  # and the node's DNS server (gateway)
    assert topology.reaches(open_, HOST_A)
    assert topology.reaches(both, HOST_A)  # a normal network among its networks
    assert topology.reaches(both, "10.242.12.2")

    # After a restart the internal-only container has a way out again (its namespace
    # made again, with a default route): the first map takes it away.
    sh("ip", "-n", shut, "route", "add", "default", "via", "10.243.20.1")
    assert topology.reaches(shut, HOST_A)
    after = manager(topology)
    after.adopt("c-in", f"/var/run/netns/{shut}", shut_address, [("quiet", "10.242.12.2")])
    await after.on_maps(maps)
    assert not topology.reaches(shut, HOST_A)


async def test_an_isolated_client_gets_its_networks_names_and_nothing_forwarded() -> None:
    outside = ServiceDNS(upstreams=[])
    outside.set_records({"example.test": ["192.0.2.7"]})
    await outside.start("127.0.0.1", free_port())
    node = ServiceDNS(upstreams=[("127.0.0.1", outside.port)])
    await node.start("127.0.0.1", free_port())
    try:

        async def ask(name: str) -> dns.message.Message:
            query = dns.message.make_query(name, "A")
            return await dns.asyncquery.udp(query, "127.0.0.1", port=node.port, timeout=3)

        names = {"127.0.0.1": {"web": ["10.242.12.250"]}}
        node.set_scoped(names)
        assert (await ask("example.test")).rcode() == dns.rcode.NOERROR  # forwarded
        node.set_scoped(names, isolated={"127.0.0.1"})
        assert (await ask("example.test")).rcode() == dns.rcode.REFUSED
        web = await ask("web")
        assert [item.to_text() for rrset in web.answer for item in rrset] == ["10.242.12.250"]
    finally:
        await node.stop()
        await outside.stop()
