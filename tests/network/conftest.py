"""Fixtures for the bridge network tests: real agents with real CNI plugins.

Each agent gets its own bridge (`dyt<hex>`) and a /24 no route of this host uses
(10.213.X.0/24), so parallel sessions do not collide. Teardown kills the agent, its
containers and conmons (`cleanup_everything`), then releases the network: CNI DEL of
every recorded attachment, the namespaces of the bridge, any iptables rule that names one
of its containers or its subnet, its veths and the bridge (`cleanup_network`), also when
the test failed.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.agent.network.netns import list_netns
from tests.agent.conftest import Agent, ImageRegistry, image_registry
from tests.ports import free_port
from tests.runtime.conftest import (
    _have_runc,
    bridge_links,
    cleanup_everything,
    cleanup_network,
    iptables_lines,
)

__all__ = ["BridgeAgent", "image_registry"]

BIN = Path(sys.executable).parent
CNI_DIR = Path("/usr/lib/cni")
_used_subnets: set[str] = set()
_subnet_lock = threading.Lock()


def have_network() -> bool:
    return (
        _have_runc()
        and all((CNI_DIR / p).exists() for p in ("bridge", "host-local", "portmap", "firewall"))
        and shutil.which("iptables-save") is not None
        and shutil.which("ip") is not None
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if have_network():
        return
    skip = pytest.mark.skip(
        reason="needs root, runc, conmon, busybox, iproute2, iptables "
        "and the CNI plugins (containernetworking-plugins)"
    )
    for item in items:
        if "runc" in item.keywords and "tests/network/" in str(item.fspath):
            item.add_marker(skip)


def free_subnet() -> str:
    """A 10.213.X.0/24 that no route of this host overlaps (nor another test's)."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    taken = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable"):
            word = line.split()[1]
        try:
            taken.append(ipaddress.IPv4Network(word, strict=False))
        except ValueError:
            continue
    with _subnet_lock:
        for third in random.sample(range(256), 256):
            subnet = ipaddress.IPv4Network(f"10.213.{third}.0/24")
            if str(subnet) not in _used_subnets and not any(
                subnet.overlaps(t) for t in taken if t.prefixlen > 0
            ):
                _used_subnets.add(str(subnet))
                return str(subnet)
    raise AssertionError("no free 10.213.X.0/24 for a test bridge")


@dataclass
class BridgeAgent:
    """An agent with its own bridge; `cli` runs `dockyard -H` against it."""

    agent: Agent
    bridge: str
    subnet: str
    config_dir: Path
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def network_root(self) -> Path:
        return self.agent.state_dir / "network"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env["DOCKYARD_CONFIG"] = str(self.config_dir)
        return subprocess.run(
            [str(BIN / "dockyard"), "-H", self.agent.address, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"dockyard {' '.join(args)} exited {result.returncode}: {result.stderr}\n"
            f"--- agent log ---\n{self.agent.log()}"
        )
        return result.stdout

    def netns_of(self, container_id: str) -> str:
        return f"dy-{self.bridge}-{container_id}"

    def serve_udp_echo(self, container_id: str, port: int) -> None:
        """A UDP echo server in the container's network namespace (busybox has none):
        the host's python, run with `ip netns exec`; killed at teardown."""
        code = (
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0',{port}))\nprint('ready',flush=True)\n"
            "while True:\n d,a=s.recvfrom(2048)\n s.sendto(b'echo:'+d,a)\n"
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.netns_of(container_id), sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self.servers.append(server)
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"

    def veth_of(self, container_id: str) -> str:
        """The host end of the container's veth pair (from the agent's record)."""
        import json

        path = self.network_root / "containers" / f"{container_id}.json"
        result = json.loads(path.read_text())["result"]
        return str(
            next(
                i["name"]
                for i in result["interfaces"]
                if i["name"].startswith("veth") and not i.get("sandbox")
            )
        )

    def leftovers(self, container_id: str, ip: str = "", veth: str = "") -> list[str]:
        """Whatever of the container's network still exists."""
        found = [f"netns {n}" for n in list_netns() if container_id in n]
        if veth and Path(f"/sys/class/net/{veth}").exists():
            found.append(f"link {veth} (on {bridge_links(self.bridge)})")
        patterns = [container_id, f"{ip}/32" if ip else ""]
        found += [f"iptables {table}: {line}" for table, line in iptables_lines(patterns)]
        ipam = self.network_root / "ipam" / f"dockyard-{self.bridge}"
        if ipam.is_dir():
            found += [
                f"IPAM {p.name}"
                for p in ipam.iterdir()
                if p.name == ip or (p.is_file() and container_id in p.read_text(errors="replace"))
            ]
        if (self.network_root / "containers" / f"{container_id}.json").exists():
            found.append("network record")
        return found

    def stop_servers(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
        self.servers.clear()


@pytest.fixture(scope="module")
def bridge_agent_factory(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry
) -> Iterator[Callable[..., BridgeAgent]]:
    """Makes agents on their own bridges; teardown releases all they made."""
    made: list[BridgeAgent] = []

    def make(pull: bool = True, bridge: str = "", subnet: str = "") -> BridgeAgent:
        root = tmp_path_factory.mktemp("bridge-agent")
        bridge = bridge or f"dyt{uuid.uuid4().hex[:8]}"
        subnet = subnet or free_subnet()
        agent = Agent(
            state_dir=root / "state",
            port=free_port(),
            cgroup_parent=f"dockyard-test-{uuid.uuid4().hex[:8]}",
            log_path=root / "agent.log",
            extra=["--bridge", bridge, "--bridge-subnet", subnet],
        )
        under_test = BridgeAgent(agent, bridge, subnet, root / "cli-config")
        made.append(under_test)
        agent.start()
        if pull:
            assert agent.pull(image_registry.busybox)[-1].done
        return under_test

    try:
        yield make
    finally:
        for under_test in made:
            under_test.stop_servers()
            under_test.agent.kill_all()
            cleanup_everything(
                under_test.agent.state_dir / "runtime", under_test.agent.cgroup_parent
            )
            cleanup_network(
                under_test.network_root,
                under_test.bridge,
                [under_test.subnet.rsplit(".", 1)[0] + "."],
            )


@pytest.fixture(scope="module")
def bridge_agent(bridge_agent_factory: Callable[..., BridgeAgent]) -> BridgeAgent:
    """One agent shared by a module's tests (each removes what it made)."""
    return bridge_agent_factory()


def http_get(url: str, timeout: float = 5) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def wait_http(url: str, timeout: float = 15) -> str:
    """GET `url` until it answers (the server in the container may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url, timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def udp_echo(host: str, port: int, payload: bytes, timeout: float = 2) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        return sock.recv(2048)


def web_command(text: str, port: int = 80) -> list[str]:
    """busybox httpd serving `text` at / on `port`."""
    return [
        "sh",
        "-c",
        f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www",
    ]
