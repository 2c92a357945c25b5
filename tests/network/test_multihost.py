"""Containers on different hosts reach each other: the cluster network, end to end.

Two "hosts" are network namespaces on a LAN (a bridge of this machine, with a veth into
each); a runc agent runs inside each, with its own bridge and no --bridge-subnet, and
reaches the controller over the LAN. The controller hands each node a subnet of its pool;
each agent routes the other's subnet to the other's LAN address. Teardown deletes the
hosts (their routes, bridges and iptables go with them), the LAN, and every container.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.v1.control_pb2 import ListTasksRequest
from dockyard.v1.types_pb2 import TaskStatus
from tests.agent.conftest import BUILD, ImageRegistry
from tests.conftest import BIN, Cluster, Daemon
from tests.network.conftest import free_subnet, web_command
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything, cleanup_network

pytestmark = [pytest.mark.runc, pytest.mark.registry]

POOL = "10.96.0.0/16"
"""Inside the hosts' namespaces only, so it cannot clash with this machine's routes."""


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    port: int
    bridge: str
    cgroup: str
    state_dir: Path

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def make_lan(suffix: str, lan: ipaddress.IPv4Network, names: list[str]) -> list[tuple[str, str]]:
    """A bridge of this machine with one namespace per host on it; (netns, ip) each."""
    hosts = list(lan.hosts())
    sh("ip", "link", "add", f"dyl{suffix}", "type", "bridge")
    sh("ip", "addr", "add", f"{hosts[0]}/{lan.prefixlen}", "dev", f"dyl{suffix}")
    sh("ip", "link", "set", f"dyl{suffix}", "up")
    made = []
    for index, name in enumerate(names, start=1):
        netns, veth, ip = f"dyh{suffix}{name}", f"dyv{suffix}{name}", str(hosts[index])
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "link", "set", veth, "master", f"dyl{suffix}", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/{lan.prefixlen}", "dev", "eth0")
        for link in ("lo", "eth0"):
            sh("ip", "-n", netns, "link", "set", link, "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", str(hosts[0]))
        made.append((netns, ip))
    return made


def remove_lan(suffix: str, names: list[str]) -> None:
    for name in names:
        subprocess.run(
            ["ip", "netns", "delete", f"dyh{suffix}{name}"], capture_output=True, check=False
        )
    subprocess.run(["ip", "link", "delete", f"dyl{suffix}"], capture_output=True, check=False)


@pytest.fixture
def two_hosts(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry, tmp_path: Path
) -> Iterator[tuple[Cluster, dict[str, Host]]]:
    suffix, names = uuid.uuid4().hex[:5], ["a", "b"]
    lan = ipaddress.IPv4Network(free_subnet())
    cluster = cluster_factory(insecure=True)
    hosts: dict[str, Host] = {}
    try:
        for name, (netns, ip) in zip(names, make_lan(suffix, lan, names), strict=True):
            hosts[name] = Host(
                name,
                netns,
                ip,
                free_port(),
                f"dyb{suffix}{name}",
                f"dockyard-test-{suffix}{name}",
                cluster.root / f"agent-{name}",
            )
        # The insecure controller listens on the LAN's own address only (the hosts reach
        # it there), never on every interface of this machine.
        cluster.controller_host = str(next(lan.hosts()))
        cluster.start_controller(["--node-subnet-pool", POOL])
        image = tmp_path / "busybox.tar"
        built = subprocess.run(
            [*BUILD, "busybox", "--tag", image_registry.busybox, "--output", str(image)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert built.returncode == 0, built.stderr
        for host in hosts.values():
            start_agent(cluster, host, cluster.controller_host)
        cluster.wait_for(
            lambda: all(cluster.node_state(n) == "READY" for n in names), "both nodes READY", 30
        )
        for host in hosts.values():  # the hosts cannot reach the loopback registry
            cluster.cli("image", "load", "-i", str(image), host=host.address)
        for host in hosts.values():  # routes are set in the background, after the subnets
            cluster.wait_for(
                lambda h=host: "via" in routes_of(h),  # type: ignore[misc]
                f"{host.name}'s route to the other host",
                30,
            )
        yield cluster, hosts
    finally:
        cluster.stop()
        for host in hosts.values():
            cleanup_everything(host.state_dir / "runtime", host.cgroup)
            cleanup_network(host.state_dir / "network", host.bridge, ["10.96."])
        remove_lan(suffix, names)


def start_agent(cluster: Cluster, host: Host, controller_ip: str) -> None:
    # nsenter, not `ip netns exec`: that mounts a sysfs of the namespace over /sys, which
    # hides the cgroup mounts runc needs.
    args = [
        "nsenter",
        f"--net=/run/netns/{host.netns}",
        "--",
        str(BIN / "dockyard-agent"),
        "run",
        "--controller",
        f"{controller_ip}:{cluster.controller_port}",
        "--name",
        host.name,
        "--listen",
        host.address,
        "--state-dir",
        str(host.state_dir),
        "--runtime",
        "runc",
        "--cgroup-parent",
        host.cgroup,
        "--bridge",
        host.bridge,
        "--insecure",
        "--log-level",
        "debug",
        "--docker-api-socket",  # not the host's /run/dockyard/docker.sock (two agents here)
        "",
    ]
    cluster.agents[host.name] = Daemon(host.name, args, cluster.root / f"agent-{host.name}.log")
    cluster.agents[host.name].start()


def web_service_on(cluster: Cluster, host: Host, name: str, image: str, text: str) -> str:
    """A one-task bridge service on ``host`` answering ``text`` on 8080; its address."""
    cluster.cli(
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--network",
        "bridge",
        "--constraint",
        f"node.name=={host.name}",
        image,
        *web_command(text, 8080),
    )
    running_task(cluster, name)
    return container_ip(cluster, host, f"{name}.1.")


def run_on(cluster: Cluster, host: Host, image: str, *command: str, check: bool = True) -> str:
    """`run --rm` a bridge container on ``host``; its output."""
    return cluster.cli(
        "run",
        "--rm",
        "--network",
        "bridge",
        image,
        *command,
        host=host.address,
        check=check,
        timeout=60,
    ).stdout


def node_networks(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {name: node.get("network", {}) for name, node in cluster.nodes().items()}


def running_task(cluster: Cluster, service: str) -> object:
    control = cluster.control()
    try:

        def running() -> list[object]:
            tasks = control.ListTasks(ListTasksRequest(services=[service])).tasks
            return [t for t in tasks if t.status.state == TaskStatus.State.RUNNING]

        cluster.wait_for(lambda: len(running()) == 1, f"{service} RUNNING", 60)
        return running()[0]
    finally:
        control.close()


def container_ip(cluster: Cluster, host: Host, name_prefix: str) -> str:
    listed = json.loads(cluster.cli("ps", "-o", "json", host=host.address).stdout)
    match = next(c for c in listed if c["name"].startswith(name_prefix))
    return str(match["network"]["ip_address"])


def test_each_node_gets_its_own_subnet_and_routes_to_the_others(
    two_hosts: tuple[Cluster, dict[str, Host]],
) -> None:
    cluster, hosts = two_hosts
    cluster.wait_for(
        lambda: all(n.get("subnet") for n in node_networks(cluster).values()),
        "both nodes with a subnet",
    )
    networks = node_networks(cluster)
    subnets = {name: ipaddress.IPv4Network(networks[name]["subnet"]) for name in hosts}
    assert subnets["a"] != subnets["b"]
    assert all(
        s.subnet_of(ipaddress.IPv4Network(POOL)) and s.prefixlen == 24 for s in subnets.values()
    )
    assert {name: networks[name]["address"] for name in hosts} == {
        name: host.ip for name, host in hosts.items()
    }
    for name, other in (("a", "b"), ("b", "a")):
        expected = f"{subnets[other]} via {hosts[other].ip}"
        cluster.wait_for(
            lambda n=name, e=expected: e in routes_of(hosts[n]),  # type: ignore[misc]
            f"{name}'s route to {other}",
        )
    cluster.agents["b"].stop()  # a node that leaves the cluster: its route goes
    cluster.cli("node", "rm", "--force", "b")
    cluster.wait_for(lambda: str(subnets["b"]) not in routes_of(hosts["a"]), "b's route gone")
    # The agent deletes the route, then the chains (no peer left): wait for the second step.
    cluster.wait_for(
        lambda: "DOCKYARD-PEERS" not in hosts["a"].run("iptables-save").stdout,
        "a's peer chains gone",
    )


def routes_of(host: Host) -> str:
    return host.run("ip", "-4", "route", "show", "proto", "77").stdout


def test_a_container_on_one_host_reaches_a_service_task_on_the_other(
    two_hosts: tuple[Cluster, dict[str, Host]],
    image_registry: ImageRegistry,
) -> None:
    cluster, hosts = two_hosts
    ip = web_service_on(cluster, hosts["a"], "web", image_registry.busybox, "served-on-a")
    a_subnet = node_networks(cluster)["a"]["subnet"]
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(a_subnet)
    fetch = (
        "import sys,urllib.request\n"
        f"print(urllib.request.urlopen('http://{ip}:8080/', timeout=5).read().decode())"
    )
    cluster.wait_for(
        lambda: "served-on-a" in hosts["b"].run(sys.executable, "-c", fetch).stdout,
        "host b reaching the task on a",
        30,
    )
    reached = run_on(
        cluster, hosts["b"], image_registry.busybox, "wget", "-qO-", f"http://{ip}:8080/"
    )
    assert reached.strip() == "served-on-a"


def test_a_service_name_resolves_to_its_tasks_on_any_host(
    two_hosts: tuple[Cluster, dict[str, Host]],
    image_registry: ImageRegistry,
) -> None:
    cluster, hosts = two_hosts
    image = image_registry.busybox
    ip = web_service_on(cluster, hosts["a"], "api", image, "api-on-a")

    def resolved_on_b() -> str:
        return run_on(cluster, hosts["b"], image, "nslookup", "api", check=False)

    cluster.wait_for(lambda: ip in resolved_on_b(), "api resolving on host b", 30)
    assert (
        run_on(cluster, hosts["b"], image, "wget", "-qO-", "http://api:8080/").strip() == "api-on-a"
    )
    resolv = run_on(cluster, hosts["b"], image, "cat", "/etc/resolv.conf")
    gateway = str(next(ipaddress.IPv4Network(node_networks(cluster)["b"]["subnet"]).hosts()))
    assert resolv.splitlines()[0] == f"nameserver {gateway}"
    cluster.cli("service", "scale", "api=0")
    cluster.wait_for(lambda: ip not in resolved_on_b(), "api's old address gone from DNS", 30)
