"""The ingress routing mesh's data path (agent/network/ingress.py) with real namespaces:
two hosts on two L2 segments behind a router; a task on host B only; its published port
answers on host A's address too (the host without a task), through the ingress VXLAN.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from pyroute2 import NetNS

from dockyard.agent.network.ingress import (
    TABLE,
    IngressPort,
    apply_ingress,
    join_ingress,
    port_taken,
    remove_ingress,
)
from dockyard.agent.network.ingress_mesh import IngressMesh
from dockyard.agent.network.overlay import OverlayDevices, OverlayNetwork, Peer, mac_for
from dockyard.agent.network.overlays import OverlayManager
from dockyard.v1.dispatcher_pb2 import IngressPort as IngressPortMessage
from dockyard.v1.networks_pb2 import Network, NetworkSpec, OverlayEndpoint, OverlayNetworkMap
from tests.network.overlay_topology import Topology, unavailable

INGRESS = OverlayNetwork("ingress", 5101, "10.243.0.0/24")
NODE = {"a": "10.243.0.2", "b": "10.243.0.3"}
TASK = "10.243.0.10"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    topology = Topology()
    server: subprocess.Popen[bytes] | None = None
    try:
        topology.up()
        server = _task_on_b(topology, tmp_path_factory.mktemp("task-b"))
        yield topology
    finally:
        if server is not None:
            server.kill()
            server.wait()
        topology.down()  # the namespaces take their devices and nftables tables along


def _task_on_b(topology: Topology, root: Path) -> subprocess.Popen[bytes]:
    async def build() -> None:
        devices = {
            name: OverlayDevices(
                topology.underlay(name), netlink=partial(NetNS, topology.host(name))
            )
            for name in ("a", "b")
        }
        for name, node in devices.items():
            topology.run(topology.host(name), "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
            await node.ensure(INGRESS)
            await join_ingress(partial(NetNS, topology.host(name)), INGRESS, NODE[name])
        await devices["b"].attach(INGRESS, topology.container("task-b"), "eth1", TASK)
        peers = [
            Peer(address, mac_for(address), topology.underlay(name))
            for name, address in NODE.items()
        ]
        peers.append(Peer(TASK, mac_for(TASK), topology.underlay("b")))
        for name, node in devices.items():
            # a node's own addresses are local, not peers
            local = {NODE[name]} | ({TASK} if name == "b" else set())
            await node.set_peers(INGRESS, [p for p in peers if p.address not in local])

    asyncio.run(build())
    (root / "who").write_text("task-b")
    netns = f"{topology.prefix}-c-task-b"
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", "80", "-h", str(root)]
    )
    time.sleep(0.2)
    return server


def get(topology: Topology, netns: str, url: str) -> subprocess.CompletedProcess[str]:
    return topology.run(netns, "timeout", "3", "busybox", "wget", "-qO-", url)


async def test_the_published_port_answers_on_the_host_without_a_task(mesh: Topology) -> None:
    host_a, host_b = mesh.host("a"), mesh.host("b")
    ports = [IngressPort(8080, 80, "tcp", (TASK,)), IngressPort(9090, 90, "tcp", ())]
    for name in ("a", "b"):
        await apply_ingress(NODE[name], ports, netns=mesh.host(name))

    for address in (mesh.underlay("a"), mesh.underlay("b")):  # A runs no task
        got = get(mesh, mesh.router, f"http://{address}:8080/who")
        assert (got.returncode, got.stdout.strip()) == (0, "task-b"), got.stderr
    # from a process on host A itself (the output hook), to its own address
    got = get(mesh, host_a, f"http://{mesh.underlay('a')}:8080/who")
    assert got.stdout.strip() == "task-b", got.stderr
    # the task saw host A's ingress address, so its answer went back through host A
    # (and the router never learnt a route into the ingress subnet)
    assert "10.243." not in mesh.run(mesh.router, "ip", "-4", "route").stdout

    refused = get(mesh, mesh.router, f"http://{mesh.underlay('a')}:9090/")
    assert refused.returncode != 0 and "refused" in refused.stderr.lower()

    # atomically replaced: the port with no task left stops answering
    await apply_ingress(NODE["a"], [IngressPort(8080, 80, "tcp", ())], netns=host_a)
    assert get(mesh, mesh.router, f"http://{mesh.underlay('a')}:8080/who").returncode != 0
    assert get(mesh, mesh.router, f"http://{mesh.underlay('b')}:8080/who").returncode == 0

    await remove_ingress(host_a)
    await remove_ingress(host_a)  # gone already: no error
    assert TABLE not in mesh.run(host_a, "nft", "list", "tables").stdout
    assert TABLE in mesh.run(host_b, "nft", "list", "tables").stdout


def ingress_map(topology: Topology) -> OverlayNetworkMap:
    """The ingress network's part of a NetworkMap, as the controller sends it."""
    record = Network(id=INGRESS.network_id, subnet=INGRESS.subnet, vni=INGRESS.vni)
    record.spec.CopyFrom(NetworkSpec(name="ingress", ingress=True))
    endpoints = [OverlayEndpoint(address=NODE[n], host=topology.underlay(n)) for n in NODE]
    endpoints.append(OverlayEndpoint(address=TASK, host=topology.underlay("b"), task_id="t"))
    return OverlayNetworkMap(network=record, endpoints=endpoints)


async def test_the_agent_meshes_over_the_ingress_network_not_the_host_routes(
    mesh: Topology,
) -> None:
    host_a = mesh.host("a")
    # no host-gw path: host A has no route to B's containers but the ingress subnet's
    assert "10.243.0.0/24 dev dyb" in mesh.run(host_a, "ip", "-4", "route").stdout
    assert [
        r.strip() for r in mesh.run(host_a, "ip", "-4", "route").stdout.splitlines() if " via " in r
    ] == ["default via 10.241.1.1 dev eth0"]
    overlays = OverlayManager(OverlayDevices(mesh.underlay("a"), netlink=partial(NetNS, host_a)))
    maps = [ingress_map(mesh)]
    await overlays.on_maps(maps)
    assert await overlays.join_ingress(maps, NODE["a"])
    assert not await overlays.join_ingress([], NODE["a"])  # no ingress network: host-gw
    port = IngressPortMessage(published_port=8090, target_port=80, protocol="tcp")
    port.backends.append("10.99.0.9")  # the cluster-network address: unreachable here
    port.ingress_backends.append(TASK)
    agent = IngressMesh(netns=host_a)
    try:
        await agent.apply(NODE["a"], [port], overlay=True)
        got = get(mesh, mesh.router, f"http://{mesh.underlay('a')}:8090/who")
        assert (got.returncode, got.stdout.strip()) == (0, "task-b"), got.stderr
    finally:
        await agent.close()


def test_a_port_held_by_another_process_is_named() -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_taken("tcp", port) == (
            f"published port {port}/tcp is already in use on this node"
        )
    assert port_taken("tcp", port) is None


async def test_the_agents_mesh_follows_the_map_and_leaves_with_the_agent(mesh: Topology) -> None:
    host_b = mesh.host("b")

    def tables() -> str:
        return mesh.run(host_b, "nft", "list", "tables").stdout

    await remove_ingress(host_b)
    agent = IngressMesh(netns=host_b)
    await agent.apply(NODE["b"], [])
    assert TABLE not in tables()  # never meshed: the host's nftables untouched
    port = IngressPortMessage(published_port=8088, target_port=80, protocol="tcp")
    port.backends.append(TASK)
    await agent.apply(NODE["b"], [port])
    got = get(mesh, mesh.router, f"http://{mesh.underlay('b')}:8088/who")
    assert got.stdout.strip() == "task-b", got.stderr
    await agent.apply(NODE["b"], [])  # the service went: the port closes
    assert get(mesh, mesh.router, f"http://{mesh.underlay('b')}:8088/who").returncode != 0
    await agent.close()
    assert TABLE not in tables()
