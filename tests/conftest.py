"""Shared fixtures: a real etcd on free ports, and real daemon processes.

Everything a fixture starts is stopped at teardown, also when the test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from dockyard.common.etcd_pki import EtcdTLS
from dockyard.common.etcd_server import EtcdServer
from tests.busy_worker import BusyWorker
from tests.ports import free_port

if TYPE_CHECKING:
    from dockyard.agent.runtime.runc.rootfs import ContainerLayer

BIN = Path(sys.executable).parent
T = TypeVar("T")
# A private HOME and DOCKYARD_CONFIG for the session, hypothesis' print_blob profile,
# and DOCKYARD_REQUIRE_ALL=1 (CI) turning skips into failures.
pytest_plugins = ["tests.session_guards"]


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd" / "data", log_path=tmp_path / "etcd.log")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class LoopThread:
    """An event loop in a thread, for sync tests that drive async helpers
    (an EtcdServer they stop and start again) while they block on processes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.close()


@dataclass
class Daemon:
    """A dockyard daemon started as its own process (in its own process group)."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            self.args,
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    """A controller and agents on loopback, each with its own state dir and port.

    By default the cluster runs with mutual TLS, set up as a user would: the
    controller's `init`, an agent join token, `dockyard-agent join` per agent,
    and the CLI with the admin identity. `insecure=True` runs it in plaintext.
    """

    root: Path
    controller_host: str = "127.0.0.1"
    heartbeat: float = 0.3
    grace: float = 1.2
    etcd_endpoints: list[str] = field(default_factory=list)
    controller_port: int = field(default_factory=free_port)
    controller: Daemon | None = None
    agents: dict[str, Daemon] = field(default_factory=dict)
    config_dir: Path = field(init=False)
    insecure: bool = False
    join_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    token: str | None = None
    # Hollow clusters name images (busybox) that no loopback registry has: asking
    # docker.io would leave the machine. Clusters on a test registry say "always".
    resolve_image: str = "never"
    # Another cluster object whose controller this one's joins (a controller token).
    join_from: Cluster | None = None
    # The private bridge and subnet of each runc agent (see start_agent).
    networks: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config_dir = self.root / "cli-config"

    @property
    def address(self) -> str:
        return f"{self.controller_host}:{self.controller_port}"

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.join_port}"

    @property
    def pki(self) -> Path:
        return self.root / "controller" / "pki"

    @property
    def etcd_tls(self) -> EtcdTLS | None:
        """The client certificates of the controller's embedded etcd (None: no embedded
        etcd, or it has not started yet)."""
        tls = EtcdTLS(self.root / "controller" / "etcd" / "pki")
        return tls if not self.etcd_endpoints and tls.ca.exists() else None

    def env(self) -> dict[str, str]:
        env = {**os.environ, "DOCKYARD_CONFIG": str(self.config_dir)}
        for name in (
            "DOCKYARD_HOST",
            "DOCKYARD_CONTEXT",
            "DOCKYARD_TLS_CACERT",
            "DOCKYARD_TLS_CERT",
            "DOCKYARD_TLS_KEY",
            "DOCKYARD_CERT_PATH",
        ):
            env.pop(name, None)
        return env

    def tls_args(self, identity: Path | None = None) -> list[str]:
        """--tls* flags for the CLI: the admin identity (or another identity dir)."""
        directory = identity or self.pki / "admin"
        if self.insecure or not directory.exists():  # not initialized: plaintext
            return []
        return [
            "--tlscacert",
            str(directory / "ca.pem"),
            "--tlscert",
            str(directory / "cert.pem"),
            "--tlskey",
            str(directory / "key.pem"),
        ]

    def run_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a dockyard binary (`dockyard-controller init`, ...) with this cluster's config."""
        result = subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr}")
        return result

    def init(self) -> None:
        args = [
            "dockyard-controller",
            "init",
            "--state-dir",
            str(self.root / "controller"),
            "--listen",
            self.address,
            "--context",
            "admin",
        ]
        for endpoint in self.etcd_endpoints:
            args += ["--etcd", endpoint]
        self.run_tool(*args)

    def join_controller(self) -> None:
        """`dockyard-controller join` this cluster's controller to `join_from`'s cluster."""
        leader = self.join_from
        assert leader is not None
        token = leader.run_tool(
            "dockyard-controller",
            "token",
            "create",
            "--role",
            "controller",
            "--ttl",
            "0",
            "-H",
            leader.address,
            *leader.tls_args(),
        ).stdout.strip()
        args = [
            "dockyard-controller",
            "join",
            "--token",
            token,
            leader.join_address,
            "--state-dir",
            str(self.root / "controller"),
            "--listen",
            self.address,
            "--context",
            "admin",
        ]
        for endpoint in self.etcd_endpoints:
            args += ["--etcd", endpoint]
        self.run_tool(*args)

    def join_token(self) -> str:
        if self.token is None:
            self.token = self.run_tool(
                "dockyard-controller",
                "token",
                "create",
                "--role",
                "agent",
                "--ttl",
                "0",
                "-H",
                self.address,
                *self.tls_args(),
            ).stdout.strip()
        return self.token

    def join(
        self, name: str, state_dir: Path, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run_tool(
            "dockyard-agent",
            "join",
            "--token",
            token or self.join_token(),
            self.join_address,
            "--state-dir",
            str(state_dir),
            "--name",
            name,
            check=check,
        )

    def admin_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(
            (self.pki / "admin" / "ca.pem").read_bytes(),
            (self.pki / "admin" / "key.pem").read_bytes(),
            (self.pki / "admin" / "cert.pem").read_bytes(),
        )

    def start_controller(self, extra: list[str] | None = None) -> Daemon:
        args = [
            str(BIN / "dockyard-controller"),
            "run",
            "--listen",
            self.address,
            "--state-dir",
            str(self.root / "controller"),
            "--heartbeat-period",
            str(self.heartbeat),
            "--node-grace",
            str(self.grace),
            "--leader-ttl",
            "3",
            "--resolve-image",
            self.resolve_image,
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--log-level",
            "debug",
        ]
        for endpoint in self.etcd_endpoints:
            args += ["--etcd", endpoint]
        if self.insecure:
            args.append("--insecure")
        else:
            if self.join_from is not None:
                self.join_controller()
            else:
                self.init()
            args += ["--join-listen", self.join_address]
        self.controller = Daemon(
            "controller", args + (extra or []), self.root / "controller.log"
        ).start()
        self.wait_for(lambda: self.cli_ok("info"), "controller answers", 30)
        return self.controller

    def control(self) -> Any:
        """A Control stub on the controller (close its channel with .close())."""
        import grpc

        from dockyard.v1 import control_pb2_grpc

        channel = (
            grpc.insecure_channel(self.address)
            if self.insecure
            else grpc.secure_channel(self.address, self.admin_credentials())
        )
        stub = control_pb2_grpc.ControlStub(channel)
        stub.close = channel.close
        return stub

    def start_agent(
        self,
        name: str,
        port: int | None = None,
        runtime: str = "hollow",
        extra: list[str] | None = None,
    ) -> Daemon:
        existing = self.agents.get(name)
        listen = (
            existing.args[existing.args.index("--listen") + 1]
            if existing
            else (f"127.0.0.1:{port or free_port()}")
        )
        args = [
            str(BIN / "dockyard-agent"),
            "run",
            "--controller",
            self.address,
            "--name",
            name,
            "--listen",
            listen,
            "--state-dir",
            str(self.root / f"agent-{name}"),
            "--runtime",
            runtime,
            "--log-level",
            "debug",
            "--docker-api-socket",  # not the host's /run/dockyard/docker.sock (extra may set one)
            "",
        ]
        if existing is None and runtime == "runc":
            extra = [*(extra or []), *self._host_network_flags(name, extra or [])]
        if existing is not None:
            args = existing.args  # a restart: the same flags as before
        elif self.insecure:
            args.append("--insecure")
        else:
            self.join(name, self.root / f"agent-{name}")
        self.agents[name] = Daemon(
            name, args + ([] if existing else extra or []), self.root / f"agent-{name}.log"
        ).start()
        return self.agents[name]

    def _host_network_flags(self, name: str, extra: list[str]) -> list[str]:
        """A runc agent in this host's namespace gets its own bridge and a free subnet
        (not dockyard0 and the default subnet, shared by every agent of the host) and
        leaves the host's routes and DOCKYARD-PEERS chains alone (--no-peer-routes)."""
        from tests.network.conftest import free_subnet

        flags = [] if "--peer-routes" in extra else ["--no-peer-routes"]
        if "--bridge" in extra:
            bridge = extra[extra.index("--bridge") + 1]
            subnet = extra[extra.index("--bridge-subnet") + 1] if "--bridge-subnet" in extra else ""
        else:
            bridge, subnet = f"dyt{uuid.uuid4().hex[:8]}", free_subnet()
            flags += ["--bridge", bridge, "--bridge-subnet", subnet]
        self.networks[name] = (bridge, subnet)
        return flags

    def cleanup_networks(self) -> None:
        """Release the bridge networks of this cluster's runc agents (after their
        containers are gone): namespaces, veths, iptables rules, IPAM, the bridge."""
        from tests.runtime.conftest import cleanup_network

        for name, (bridge, subnet) in self.networks.items():
            cleanup_network(
                self.root / f"agent-{name}" / "network",
                bridge,
                [subnet.rsplit(".", 1)[0] + "."] if subnet else [],
            )
        # The overlay bridges runc agents sharing this host made (agent/network/overlay.py,
        # shared): those with no container left (another test's agent makes its own
        # again when it plugs one in).
        for bridge in Path("/sys/class/net").glob("dys-*"):
            if (bridge / "brif").is_dir() and not any((bridge / "brif").iterdir()):
                subprocess.run(["ip", "link", "delete", bridge.name], check=False)

    def agent_address(self, name: str) -> str:
        args = self.agents[name].args
        return args[args.index("--listen") + 1]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 30, host: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `dockyard -H <controller, or host> ARGS` (as admin, over TLS unless insecure)."""
        result = subprocess.run(
            [str(BIN / "dockyard"), *self.tls_args(), "-H", host or self.address, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(args)} failed: {result.stderr}")
        return result

    def cli_ok(self, *args: str) -> bool:
        return self.cli(*args, check=False).returncode == 0

    def nodes(self) -> dict[str, dict[str, Any]]:
        data = json.loads(self.cli("node", "ls", "-o", "json").stdout)
        return {node["spec"]["name"]: node for node in data}

    def start_hollow_nodes(self, names: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        """Hollow agents with these names, and wait until every node is READY."""
        for name in names:
            self.start_agent(name)
        self.wait_for(
            lambda: (
                len(self.nodes()) == len(names)
                and all(n["status"]["state"] == "READY" for n in self.nodes().values())
            ),
            f"{len(names)} nodes READY",
        )

    def node_state(self, name: str) -> str | None:
        node = self.nodes().get(name)
        return node["status"]["state"] if node else None

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> float:
        """Poll until predicate() holds; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.1)
        logs = "\n".join(
            f"--- {d.name} ---\n{d.log()[-3000:]}"
            for d in [self.controller, *self.agents.values()]
            if d is not None
        )
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    def stop(self) -> None:
        for daemon in [*self.agents.values(), self.controller]:
            if daemon is not None:
                daemon.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", **kwargs)
        cluster.root.mkdir(parents=True)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
        for cluster in made:
            cluster.cleanup_networks()


@pytest.fixture
def control(cluster: Cluster) -> Iterator[Any]:
    """A Control stub (admin) on the `cluster` fixture of the test's module."""
    stub = cluster.control()
    yield stub
    stub.close()


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions run through ``asyncio.to_thread`` or a thread lane of
    the runc runtime (its starts' own threads) during the test, in order (a spy: each
    still runs in its thread)."""
    from dockyard.agent.runtime.runc.lane import ThreadLane

    names: list[str] = []
    real = asyncio.to_thread
    real_lane = ThreadLane.run

    async def spy(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        names.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    async def lane_spy(lane: ThreadLane, func: Callable[..., Any], *args: Any) -> Any:
        names.append(getattr(func, "__name__", repr(func)))
        return await real_lane(lane, func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    monkeypatch.setattr(ThreadLane, "run", lane_spy)
    return names


@pytest.fixture
async def busy() -> AsyncIterator[BusyWorker]:
    """The test loop's thread pool cut to one worker (`tests/busy_worker.py`)."""
    worker = BusyWorker()
    worker.install()
    try:
        yield worker
    finally:
        worker.close()


@pytest.fixture
def overlay_layer(tmp_path: Path) -> Iterator[ContainerLayer]:
    """A container's overlay over one lower dir holding `out` (not mounted yet); left
    unmounted at the end, however often the test mounted it."""
    from dockyard.agent.runtime.runc.rootfs import ContainerLayer, is_mounted

    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "out").write_text("result\n")
    made = ContainerLayer([lower], tmp_path / "container")
    yield made
    while is_mounted(made.target):
        made.unmount_blocking()
