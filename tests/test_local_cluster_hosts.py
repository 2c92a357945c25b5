"""`deploy/local-cluster up --hosts 2`: each agent on a host of its own (a network
namespace with its own address on a LAN bridge). The published sample answers on every
host (the routing mesh, the default for a published port), the hosts route each other's
container subnets, a host cut off goes DOWN and comes back;
`down` removes every namespace and the LAN bridge it made."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.network.conftest import free_subnet
from tests.test_local_cluster import LocalCluster, _get, _local_cluster, _offsets, _wait

pytestmark = [pytest.mark.runc, pytest.mark.registry]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    yield from _local_cluster(tmp_path, _offsets(2), 2)


def node_states(lc: LocalCluster) -> dict[str, str]:
    done = lc.cli("node", "ls", "-o", "json")
    if done.returncode:
        return {}
    return {n["spec"]["name"]: n["status"]["state"] for n in json.loads(done.stdout)}


def test_each_agent_on_a_host_of_its_own(cluster: LocalCluster) -> None:
    lc = cluster
    lan = ipaddress.IPv4Network(free_subnet())
    out = lc.up("--hosts", "2", "--lan", str(lan))
    assert f"mode: separate hosts: each agent in a network namespace on the LAN {lan}" in out
    ips = {f"node-{n}": str(lan.network_address + 10 + n) for n in (1, 2)}
    netns = {name: f"{lc.prefix}host-{name.removeprefix('node-')}" for name in ips}
    nodes = {n["spec"]["name"]: n for n in json.loads(lc.cli("node", "ls", "-o", "json").stdout)}
    assert {name: n["network"]["address"] for name, n in nodes.items()} == ips
    subnets = {name: n["network"]["subnet"] for name, n in nodes.items()}

    # The published sample (an ingress port, the default) answers on every host's
    # address: its own, and the other's through the routing mesh.
    tasks = json.loads(lc.cli("service", "ps", "hello", "-o", "json").stdout)
    ids = {n["id"]: name for name, n in nodes.items()}
    on = ids[next(t["node_id"] for t in tasks if t["status"]["state"] == "RUNNING")]
    other = next(name for name in ips if name != on)
    _wait(
        lambda: _get(f"http://{ips[on]}:{lc.sample_port}/").startswith("hello from"),
        "hello answering on its host",
    )
    _wait(
        lambda: _get(f"http://{ips[other]}:{lc.sample_port}/").startswith("hello from"),
        "hello answering on the other host, through the mesh",
    )

    # Each host routes the other's container subnet to the other's address.
    for name, peer in (("node-1", "node-2"), ("node-2", "node-1")):
        expected = f"{subnets[peer]} via {ips[peer]}"
        _wait(
            lambda n=name, e=expected: (
                e
                in subprocess.run(
                    ["ip", "-n", netns[n], "-4", "route", "show", "proto", "77"],
                    capture_output=True,
                    text=True,
                ).stdout
            ),
            f"{name}'s route to {peer}",
        )

    # A host cut off from the LAN goes DOWN; back on it, READY again.
    veth = f"{lc.prefix}h{other.removeprefix('node-')}"
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        _wait(lambda: node_states(lc).get(other) == "DOWN", f"{other} DOWN", timeout=60)
        assert node_states(lc)[on] == "READY"
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    _wait(lambda: node_states(lc).get(other) == "READY", f"{other} READY again", timeout=60)

    status = lc.run("status").stdout
    assert "mode: separate hosts" in status
    down = lc.ok("down")
    assert f"removed host {netns['node-1']}" in down
    assert not [p for p in Path("/run/netns").glob(f"{lc.prefix}*")]
    assert not Path(f"/sys/class/net/{lc.prefix}lan").exists()
    assert lc.leftovers() == []
