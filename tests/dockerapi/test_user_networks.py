"""User-defined networks through the Docker API, driven by Debian's docker CLI: each
network a bridge and subnet of its own, isolated from the others and from the node's
bridge, names resolved within a network, the bridge gone with `network rm`, networks
and their containers kept across an agent restart.

Every reachability check is traffic between containers this module created, on bridges
this module's agent made.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from dockyard.agent.network.netns import list_netns
from tests.agent.conftest import ImageRegistry
from tests.dockerapi.conftest import BUSYBOX, DockerAgent, start_docker_agent
from tests.runtime.conftest import cleanup_network, purge_iptables

_MADE: set[str] = set()
"""Bridges the tests saw made (deleted at the end if a removal left them)."""


def _cleanup_local(agent: DockerAgent) -> None:
    """The user-defined networks' attachments, bridges and this agent's isolation table."""
    root = agent.agent.state_dir / "network" / "local"
    for spec_file in sorted(root.glob("*/network.json")) if root.is_dir() else []:
        bridge = json.loads(spec_file.read_text())["bridge"]
        cleanup_network(spec_file.parent, bridge)
    records = agent.agent.state_dir / "dockerapi" / "networks.json"
    known = json.loads(records.read_text())["networks"] if records.exists() else []
    for netns in list_netns():  # one whose record a failed removal lost
        if any(netns.startswith(f"dy-{bridge}-") for bridge in _MADE):
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
            purge_iptables([netns.rsplit("-", 1)[1]])
    for bridge in _MADE | {r["bridge"] for r in known if r.get("bridge")}:
        if _link_exists(bridge):  # a bridge its network's removal left behind
            with IPRoute() as ipr:
                ipr.link("del", index=ipr.link_lookup(ifname=bridge)[0])
    subprocess.run(
        ["nft", "delete", "table", "ip", f"dy-iso-{agent.bridge}"],
        capture_output=True,
        check=False,
    )


@pytest.fixture(scope="module")
def net_agent(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry
) -> Iterator[DockerAgent]:
    under_test, teardown = start_docker_agent(tmp_path_factory.mktemp("user-nets"), image_registry)
    try:
        yield under_test
    finally:
        teardown()
        _cleanup_local(under_test)


def _inspect(agent: DockerAgent, *args: str) -> dict:
    [found] = json.loads(agent.ok(*args))
    return found


def _link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def _fetch(agent: DockerAgent, network: str, target: str) -> subprocess.CompletedProcess[str]:
    """`wget` of the target's /hostname from a new container on `network` (a child of
    `sh`, which `exit` keeps from exec'ing it: as PID 1 it would ignore `timeout`'s kill)."""
    return agent.docker(
        "run", "--rm", "--network", network, BUSYBOX,
        "sh", "-c", f"timeout -s KILL 5 wget -qO- http://{target}/hostname; exit $?",
    )  # fmt: skip


def _lookup(agent: DockerAgent, network: str, name: str) -> str:
    """What `nslookup name` answers in a new container on `network` (busybox's wget
    resolves through a static glibc, which crashes; its nslookup asks the DNS itself)."""
    done = agent.docker("run", "--rm", "--network", network, BUSYBOX, "nslookup", name)
    return done.stdout + done.stderr


def _server(agent: DockerAgent, name: str, network: str) -> str:
    """A busybox httpd serving /etc on `network`; its address."""
    agent.ok(
        "run", "-d", "--name", name, "--hostname", name, "--network", network, BUSYBOX,
        "httpd", "-f", "-p", "80", "-h", "/etc",
    )  # fmt: skip
    settings = _inspect(agent, "inspect", name)["NetworkSettings"]["Networks"]
    return str(settings[network]["IPAddress"])


def test_networks_have_own_bridges_are_isolated_and_resolve_within(
    net_agent: DockerAgent,
) -> None:
    agent = net_agent
    agent.ok("network", "create", "red")
    agent.ok("network", "create", "blue")
    try:
        red = _inspect(agent, "network", "inspect", "red")
        blue = _inspect(agent, "network", "inspect", "blue")
        red_net = ipaddress.IPv4Network(red["IPAM"]["Config"][0]["Subnet"])
        blue_net = ipaddress.IPv4Network(blue["IPAM"]["Config"][0]["Subnet"])
        node_net = ipaddress.IPv4Network(agent.subnet)
        assert not red_net.overlaps(blue_net) and not red_net.overlaps(node_net)
        assert not blue_net.overlaps(node_net)
        red_bridge = red["Options"]["com.docker.network.bridge.name"]
        _MADE.update({red_bridge, blue["Options"]["com.docker.network.bridge.name"]})
        assert red_bridge.startswith("dyn-")

        red_ip = _server(agent, "red-web", "red")
        assert ipaddress.IPv4Address(red_ip) in red_net
        assert _link_exists(red_bridge)

        assert red_ip in _lookup(agent, "red", "red-web")  # by name, on its own network
        same = _fetch(agent, "red", red_ip)
        assert same.returncode == 0 and same.stdout.strip() == "red-web", same.stderr

        other = _fetch(agent, "blue", red_ip)  # by address, from another network
        assert other.returncode != 0, other.stdout
        from_bridge = _fetch(agent, "bridge", red_ip)  # from the node's bridge
        assert from_bridge.returncode != 0, from_bridge.stdout
        assert red_ip not in _lookup(agent, "blue", "red-web")

        taken = agent.docker("network", "create", "--subnet", str(red_net), "green")
        assert taken.returncode != 0 and "overlaps network red" in taken.stderr, taken.stderr
        node = agent.docker("network", "create", "--subnet", agent.subnet, "green")
        assert node.returncode != 0 and "overlaps" in node.stderr, node.stderr

        agent.ok("rm", "-f", "red-web")
        agent.ok("network", "rm", "red")
        assert not _link_exists(red_bridge)
    finally:
        agent.docker("rm", "-f", "red-web")
        agent.docker("network", "rm", "red")
        agent.docker("network", "rm", "blue")


def test_networks_and_their_containers_survive_an_agent_restart(
    net_agent: DockerAgent,
) -> None:
    agent = net_agent
    agent.ok("network", "create", "kept")
    try:
        before = _inspect(agent, "network", "inspect", "kept")
        _MADE.add(before["Options"]["com.docker.network.bridge.name"])
        kept_ip = _server(agent, "kept-web", "kept")
        agent.agent.terminate()
        agent.agent.start()
        after = _inspect(agent, "network", "inspect", "kept")
        assert after["Id"] == before["Id"] and after["IPAM"] == before["IPAM"]
        assert _inspect(agent, "inspect", "kept-web")["State"]["Running"]
        assert kept_ip in _lookup(agent, "kept", "kept-web")
        again = _fetch(agent, "kept", kept_ip)
        assert again.returncode == 0 and again.stdout.strip() == "kept-web", again.stderr
        isolated = _fetch(agent, "bridge", kept_ip)
        assert isolated.returncode != 0, isolated.stdout
    finally:
        agent.docker("rm", "-f", "kept-web")
        agent.docker("network", "rm", "kept")
