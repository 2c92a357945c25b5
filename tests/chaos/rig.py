"""A chaos rig: real etcd members, real controller processes, agents, a checker.

Controllers run in plaintext (`--insecure`) with short timings (a 2 s lease) on the
rig's etcd; every agent is given every controller's address. `close()` resumes stopped
processes and stops everything the rig started, also when the scenario failed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetInfoRequest,
    GetServiceRequest,
    UpdateServiceRequest,
)
from dockyard.v1.workloads_pb2 import ServiceSpec
from tests.chaos.etcd_cluster import EtcdCluster
from tests.chaos.invariants import InvariantChecker, View
from tests.conftest import Cluster, Daemon

LEASE = 2  # --leader-ttl, seconds
HEARTBEAT = 0.3
GRACE = 1.2  # --node-grace


@dataclass
class Rig:
    root: Path
    etcd_members: int = 1
    down_grace: float = 1.0  # --node-down-grace
    window: float = 0.0  # the documented extra-replica window of the scenario
    controller_host: str = "127.0.0.1"  # where controllers listen (gRPC)
    controller_env: dict[str, str] = field(default_factory=dict)  # added to their environment
    lease: int = LEASE  # --leader-ttl
    etcd: EtcdCluster = field(init=False)
    controllers: list[Cluster] = field(default_factory=list)
    checker: InvariantChecker | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.etcd = EtcdCluster(self.root / "etcd", self.etcd_members)
        self.etcd.start()

    # -- controllers -----------------------------------------------------------

    def start_controllers(self, count: int) -> None:
        for index in range(count):
            cluster = Cluster(
                self.root / f"c{index}",
                heartbeat=HEARTBEAT,
                grace=GRACE,
                etcd_endpoints=self.etcd.endpoints,
                insecure=True,
                controller_host=self.controller_host,
            )
            cluster.root.mkdir(parents=True)
            self.controllers.append(cluster)
            with _environment(self.controller_env):
                cluster.start_controller(
                    ["--leader-ttl", str(self.lease), "--node-down-grace", str(self.down_grace)]
                )
        self.wait_for(lambda: self.leader() is not None, "a leader", 30)

    def daemon(self, index: int) -> Daemon:
        daemon = self.controllers[index].controller
        assert daemon is not None and daemon.process is not None
        return daemon

    def is_leader(self, index: int) -> bool:
        control = self.controllers[index].control()
        try:
            return bool(control.GetInfo(GetInfoRequest(), timeout=2).is_leader)
        except grpc.RpcError:
            return False
        finally:
            control.close()

    def leader(self) -> int | None:
        for index in range(len(self.controllers)):
            if self.daemon(index).process.poll() is None and self.is_leader(index):  # type: ignore[union-attr]
                return index
        return None

    def signal(self, index: int, sig: int) -> None:
        os.killpg(self.daemon(index).process.pid, sig)  # type: ignore[union-attr]

    def restart_controller(self, index: int) -> None:
        self.daemon(index).start()

    # -- agents and services ---------------------------------------------------

    @property
    def agents(self) -> dict[str, Daemon]:
        return self.controllers[0].agents

    def start_agents(
        self, names: tuple[str, ...], runtime: str = "hollow", extra: list[str] | None = None
    ) -> None:
        others = [arg for c in self.controllers[1:] for arg in ("--controller", c.address)]
        for name in names:
            self.controllers[0].start_agent(name, runtime=runtime, extra=others + (extra or []))
        self.wait_for(lambda: self._ready_nodes() >= len(names), f"{len(names)} nodes READY", 60)

    def _ready_nodes(self) -> int:
        nodes = json.loads(self.controllers[0].cli("node", "ls", "-o", "json").stdout)
        return sum(1 for n in nodes if n["status"]["state"] == "READY")

    def control(self, index: int = 0) -> Any:
        return self.controllers[index].control()

    def create_service(self, name: str, replicas: int, image: str = "busybox") -> str:
        spec = ServiceSpec(name=name)
        spec.task.container.image = image
        spec.task.container.command.extend(["sleep", "3600"])
        spec.task.container.stop_grace_seconds = 1
        spec.replicated.replicas = replicas
        control = self.control()
        try:
            return str(control.CreateService(CreateServiceRequest(spec=spec), timeout=30).id)
        finally:
            control.close()

    def scale(self, name: str, replicas: int, via: int = 0, timeout: float = 30) -> None:
        control = self.control(via)
        try:
            service = control.GetService(GetServiceRequest(service=name), timeout=timeout)
            spec = ServiceSpec()
            spec.CopyFrom(service.spec)
            spec.replicated.replicas = replicas
            control.UpdateService(
                UpdateServiceRequest(service=name, version=service.meta.version, spec=spec),
                timeout=timeout,
            )
        finally:
            control.close()

    # -- checking --------------------------------------------------------------

    def start_checker(self) -> InvariantChecker:
        http = [f"127.0.0.1:{cluster.http_port}" for cluster in self.controllers]
        self.checker = InvariantChecker(self.etcd.endpoints, self.window, http)
        self.checker.start()
        return self.checker

    def steady(self, service_id: str, replicas: int, timeout: float = 60) -> None:
        """Wait until the service runs, and take the checker's baseline then."""
        assert self.checker is not None
        self.wait_running(service_id, replicas, timeout)
        self.checker.mark_baseline()

    def wait_running(
        self, service_id: str, replicas: int, timeout: float, exclude_node: str = ""
    ) -> float:
        """Monotonic time at which `replicas` tasks of the service were seen RUNNING."""
        assert self.checker is not None

        def done(view: View) -> bool:
            running = view.running(service_id, exclude_node)
            per_slot = {t.slot for t in running}
            return len(running) >= replicas and len(per_slot) >= replicas

        return self.checker.wait_for(done, f"{replicas} tasks of {service_id} RUNNING", timeout)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float) -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n" + self.logs()
                )
            time.sleep(0.1)
        return time.monotonic() - started

    def logs(self) -> str:
        daemons = [c.controller for c in self.controllers] + list(self.agents.values())
        return "\n".join(
            f"--- {d.name} {d.log_path} ---\n{d.log()[-2000:]}" for d in daemons if d is not None
        )

    def close(self) -> None:
        """Stop the daemons, then run the cleanups (a runc agent still running would
        start replacements for the containers a cleanup kills), then etcd."""
        if self.checker is not None:
            self.checker.close()
        for cluster in self.controllers:
            daemon = cluster.controller
            if daemon is not None and daemon.process is not None and daemon.process.poll() is None:
                os.killpg(daemon.process.pid, signal.SIGCONT)
        try:
            for cluster in self.controllers:
                cluster.stop()
        finally:
            for cleanup in reversed(self.cleanups):
                cleanup()
            self.etcd.close()


@contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """Processes started inside get `extra` in their environment (this process's own
    clock and libraries are unaffected: LD_PRELOAD acts on exec)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
