"""`deploy/local-cluster` end to end, on ports, subnets, bridges and a cgroup parent of
its own: `down` after an agent was SIGKILLed leaves nothing of that agent's containers
(processes, mounts, namespaces, veths, published ports' DNAT rules); `up` right after the
controller was sent SIGTERM starts a new one; `down --purge` removes the state dir.
`up --controllers 3 --etcd-members 3`: the leader SIGKILLed, another takes over and the
CLI context follows. Teardown runs `down --purge`, then removes by hand whatever that
missed."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.agent.network.netns import list_netns
from dockyard.agent.network.subnet_claims import CLAIMS_DIR
from tests.conftest import BIN
from tests.dockerapi.conftest import DOCKER
from tests.network.conftest import _subnet_lock, _used_subnets, have_network
from tests.ports import _HIGH, _LOW, free_port
from tests.runtime.conftest import bridge_links, cleanup_everything, cleanup_network

pytestmark = [pytest.mark.runc, pytest.mark.registry]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "local-cluster"
SECRET = b"local-cluster-secret-8d1f"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _offsets(nodes: int, controllers: int = 1, etcd_members: int = 0) -> list[int]:
    """The ports `deploy/local-cluster` takes, as offsets from the controller port P:
    P-1, P, P+2, node N's P+10+N; controller C >= 2 the same around P+60+4C; etcd
    member M P+90+2M and one above."""
    controller = [0, *(60 + 4 * c for c in range(2, controllers + 1))]
    return [
        *(c + d for c in controller for d in (-1, 0, 2)),
        *range(11, 11 + nodes),
        *(90 + 2 * m + d for m in range(1, etcd_members + 1) for d in (0, 1)),
    ]


def _port_base(offsets: list[int]) -> int:
    """A controller port P with P+offset free for each offset."""
    for _ in range(200):
        base = random.randrange(_LOW + 1, _HIGH - 110)  # below the ephemeral range
        if all(_free(base + offset) for offset in offsets):
            return base
    raise AssertionError("no free block of ports")


def _free_pool() -> str:
    """A 10.213.X.0/22 that no route of this host overlaps (nor another test's /24s)."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    taken = []
    for line in routes.splitlines():
        for word in line.split()[:2]:
            try:
                network = ipaddress.IPv4Network(word, strict=False)
            except ValueError:
                continue
            if network.prefixlen > 0:
                taken.append(network)
            break
    with _subnet_lock:
        for third in random.sample(range(0, 256, 4), 64):
            pool = ipaddress.IPv4Network(f"10.213.{third}.0/22")
            parts = {str(s) for s in pool.subnets(new_prefix=24)}
            if not parts & _used_subnets and not any(pool.overlaps(t) for t in taken):
                _used_subnets.update(parts)
                return str(pool)
    raise AssertionError("no free 10.213.X.0/22")


@dataclass
class LocalCluster:
    state_dir: Path
    port: int
    registry_port: int
    sample_port: int
    pool: str
    prefix: str
    cgroup: str
    context: str
    nodes: int = 2

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, (
            f"local-cluster {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def up(self, *extra: str) -> str:
        return self.ok(
            "up",
            "--nodes",
            str(self.nodes),
            "--port",
            str(self.port),
            "--registry-port",
            str(self.registry_port),
            "--sample-port",
            str(self.sample_port),
            "--subnet-pool",
            self.pool,
            "--bridge-prefix",
            self.prefix,
            "--cgroup-parent",
            self.cgroup,
            "--context",
            self.context,
            *extra,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "dockyard"), "-c", self.context, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def pid(self, name: str) -> int:
        return int((self.state_dir / "run" / f"{name}.pid").read_text())

    @property
    def patterns(self) -> list[str]:
        """What names this cluster's addresses and CNI networks in iptables rules."""
        subnets = ipaddress.IPv4Network(self.pool).subnets(new_prefix=24)
        return [f"dockyard-{self.prefix}", *(f" {str(s).rsplit('.', 1)[0]}." for s in subnets)]

    @property
    def bridges(self) -> list[str]:
        return [f"{self.prefix}node-{n}" for n in range(1, self.nodes + 1)]

    def leftovers(self) -> list[str]:
        """Whatever of the cluster's containers still exists on this host."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if str(self.state_dir).encode() in cmdline:
                    found.append(f"process {entry.name}: {cmdline.decode()[:120]}")
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        found += [f"mount {m.split()[4]}" for m in mounts if str(self.state_dir) in m]
        found += [f"netns {n}" for n in list_netns() if n.startswith(f"dy-{self.prefix}")]
        found += [
            f"veth {link} on {bridge}" for bridge in self.bridges for link in bridge_links(bridge)
        ]
        saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        found += [
            f"iptables: {line}"
            for line in saved.splitlines()
            if f"dport {self.sample_port} " in line
            or f"dports {self.sample_port} " in line
            or any(p in line for p in self.patterns)
        ]
        for agent in sorted((self.state_dir / "agents").glob("node-*")):
            runc = agent / "runtime" / "runc"
            found += [f"runc {c.name}" for c in runc.iterdir()] if runc.is_dir() else []
        return found


def _local_cluster(tmp_path: Path, offsets: list[int], nodes: int) -> Iterator[LocalCluster]:
    if not have_network():
        pytest.skip("needs root, runc, conmon, busybox, iproute2, iptables and the CNI plugins")
    tag = uuid.uuid4().hex[:3]
    base = _port_base(offsets)
    others: list[int] = []
    while len(others) < 2:
        port = free_port()
        if port - base not in offsets:
            others.append(port)
    lc = LocalCluster(
        tmp_path / "state",
        base,
        others[0],
        others[1],
        _free_pool(),
        f"dyq{tag}-",
        f"dockyard-lc-{tag}",
        f"lc-{tag}",
        nodes,
    )
    try:
        yield lc
    finally:
        lc.run("down")  # then, with the agents' records still there, whatever it missed
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and str(lc.state_dir).encode() in (entry / "cmdline").read_bytes()
                ):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
        for name in (f"node-{n}" for n in range(1, nodes + 1)):
            agent = lc.state_dir / "agents" / name
            cleanup_everything(agent / "runtime", lc.cgroup)
            cleanup_network(
                agent / "network", f"{lc.prefix}{name}", [p.strip() for p in lc.patterns]
            )
        lc.run("down", "--purge")


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    yield from _local_cluster(tmp_path, _offsets(2), 2)


@pytest.fixture
def ha_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Ports for three controllers, three etcd members and one node."""
    yield from _local_cluster(tmp_path, _offsets(1, controllers=3, etcd_members=3), 1)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:
        return str(response.read().decode())


def _wait(predicate: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_down_after_a_killed_agent_and_up_after_a_stopped_controller(
    local_cluster: LocalCluster,
) -> None:
    lc = local_cluster
    lc.up()
    url = f"http://127.0.0.1:{lc.sample_port}/"
    _wait(lambda: _get(url).startswith("hello from"), "the published sample answering")
    tasks = json.loads(lc.cli("service", "ps", "hello", "-o", "json").stdout)
    nodes = {
        n["id"]: n["spec"]["name"] for n in json.loads(lc.cli("node", "ls", "-o", "json").stdout)
    }
    victim = nodes[next(t["node_id"] for t in tasks if t["status"]["state"] == "RUNNING")]
    user_bridge = _docker_network_with_a_container(lc, victim)
    os.kill(lc.pid(victim), signal.SIGKILL)  # not restarted: its containers run on

    lc.ok("down")
    assert lc.leftovers() == []
    assert not Path(f"/sys/class/net/{user_bridge}").exists()  # the Docker network's bridge
    assert not [n for n in list_netns() if n.startswith(f"dy-{user_bridge}-")]  # its container's
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"dy-iso-{lc.prefix}{victim}" not in tables
    assert not [b for b in lc.bridges if Path(f"/sys/class/net/{b}").exists()]
    with pytest.raises(OSError):
        _get(url)

    # `up` right after SIGTERM to the controller: the exiting process is not taken for
    # a running controller; a new one is started and answers.
    lc.up("--no-sample")
    old = lc.pid("controller")
    os.kill(old, signal.SIGTERM)
    lc.up("--no-sample")
    assert lc.pid("controller") != old
    assert lc.cli("info").returncode == 0

    lc.ok("down", "--purge")
    assert not lc.state_dir.exists()
    assert lc.leftovers() == []
    assert not [b for b in lc.bridges if Path(f"/sys/class/net/{b}").exists()]
    claims = [p.read_text() for p in CLAIMS_DIR.glob("*.json")] if CLAIMS_DIR.is_dir() else []
    assert not [c for c in claims if str(lc.state_dir) in c]  # the Docker network's subnet


def _docker_network_with_a_container(lc: LocalCluster, node: str) -> str:
    """A user-defined network made through the node's Docker API, with a container on
    it; its bridge's name."""
    sock = lc.state_dir / "agents" / node / "docker.sock"
    env = {"PATH": os.environ["PATH"], "DOCKER_CONFIG": str(lc.state_dir.parent / "docker")}

    def docker(*args: str) -> str:
        done = subprocess.run(
            [DOCKER, "-H", f"unix://{sock}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    network_id = docker("network", "create", "lcnet")
    docker("run", "-d", "--network", "lcnet", "busybox", "sleep", "600")
    bridge = f"dyn-{network_id[:10]}"
    assert Path(f"/sys/class/net/{bridge}").exists()
    return bridge


def _status(lc: LocalCluster) -> dict[str, str]:
    """`status`, one line per daemon: its name and the rest of the line."""
    done = lc.run("status")
    return {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}


def test_three_controllers_on_three_etcd_members_survive_the_leaders_death(
    ha_cluster: LocalCluster,
) -> None:
    lc = ha_cluster
    lc.up("--controllers", "3", "--etcd-members", "3", "--no-sample")
    status = _status(lc)
    names = ["controller", "controller-2", "controller-3", "etcd-1", "etcd-2", "etcd-3"]
    assert all("running" in status[name] for name in names), status
    assert all("healthy" in status[f"etcd-{m}"] for m in (1, 2, 3)), status
    assert sum(" leader" in status[c] for c in names[:3]) == 1, status
    # Each member has its own data dir under the state dir; a client that trusts the
    # members' CA but has no client certificate is refused (the controllers have one).
    assert all((lc.state_dir / "etcd" / f"etcd-{m}" / "member").is_dir() for m in (1, 2, 3))
    trusting = ssl.create_default_context(cafile=str(lc.state_dir / "etcd" / "pki" / "ca.pem"))
    for member in (1, 2, 3):
        with pytest.raises(OSError):
            urllib.request.urlopen(
                f"https://127.0.0.1:{lc.port + 90 + 2 * member}/health", timeout=3, context=trusting
            )

    # The controllers share one key file: a secret is ciphertext in etcd, and each
    # controller that leads opens it for the nodes.
    assert (lc.state_dir / "encryption-keys").stat().st_mode & 0o777 == 0o600
    (lc.state_dir.parent / "pw").write_bytes(SECRET)
    made = lc.cli("secret", "create", "pw", str(lc.state_dir.parent / "pw"))
    assert made.returncode == 0, made.stderr
    stored = _etcd_value(lc, f"/dockyard/secretdata/{made.stdout.strip()}")
    assert stored.startswith(b"\x00dky:enc:") and SECRET not in stored

    created = lc.cli(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "1",
        "--secret",
        "pw",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
    )
    assert created.returncode == 0, created.stderr
    _wait(lambda: _running(lc, "web") == 1, "web running")

    leader = next(c for c in names[:3] if " leader" in status[c])
    os.kill(lc.pid(leader), signal.SIGKILL)
    # The context names every controller: the call goes to one that answers, which
    # writes the new replica count; the new leader (within two lease periods) runs it.
    _wait(
        lambda: lc.cli("service", "scale", "web=2", "--detach").returncode == 0,
        "service scale through the context",
        60,
    )
    _wait(lambda: _running(lc, "web") == 2, "web scaled to 2 under a new leader", 90)
    status = _status(lc)
    assert "stopped" in status[leader]
    assert sum(" leader" in status[c] for c in names[:3] if c != leader) == 1, status

    lc.ok("down", "--purge")
    assert not lc.state_dir.exists()
    assert lc.leftovers() == []


def _etcd_value(lc: LocalCluster, key: str) -> bytes:
    pki = lc.state_dir / "etcd" / "pki"
    got = subprocess.run(
        [
            "etcdctl",
            f"--endpoints=https://localhost:{lc.port + 90 + 2}",
            f"--cacert={pki / 'ca.pem'}",
            f"--cert={pki / 'client.pem'}",
            f"--key={pki / 'client-key.pem'}",
            "get",
            key,
            "-w",
            "json",
        ],
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        timeout=20,
        check=True,
    )
    return base64.b64decode(json.loads(got.stdout)["kvs"][0]["value"])


def _running(lc: LocalCluster, service: str) -> int:
    listed = lc.cli("service", "ps", service, "-o", "json")
    if listed.returncode != 0:
        return -1
    return sum(
        1
        for t in json.loads(listed.stdout)
        if t["status"]["state"] == "RUNNING" and t["desired_state"] == "RUNNING"
    )
