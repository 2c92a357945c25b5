"""Real etcd members (Debian's etcd-server) on loopback, one or several in one cluster.

Each member is its own process group on its own free ports, with its own data dir, so a
test can SIGKILL one member and start it again with its data. `close()` stops every
member, also after a test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    log_path: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    initial_cluster: str = ""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        executable = shutil.which("etcd")
        if executable is None:
            raise AssertionError("etcd not found: install Debian's etcd-server")
        client_url = f"http://{self.endpoint}"
        args = [
            executable,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=dockyard-chaos",
            # A lost member is noticed and a new raft leader elected quickly.
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={"ETCD_UNSUPPORTED_ARCH": "", "PATH": "/usr/bin:/bin"},
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def healthy(self) -> bool:
        """The member answers /health with true (it is part of a quorum)."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as reply:
                return b'"health":"true"' in reply.read()
        except OSError:
            return False


@dataclass
class EtcdCluster:
    """`size` members started together; members[i].kill() / start() fault one."""

    root: Path
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members = [
            EtcdMember(f"m{i}", self.root / f"m{i}" / "data", self.root / f"m{i}.log")
            for i in range(self.size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def start(self, timeout: float = 30) -> None:
        for member in self.members:
            member.start()
        self.wait_healthy(self.members, timeout)

    def start_member(self, index: int, timeout: float = 30) -> None:
        self.members[index].start()
        self.wait_healthy([self.members[index]], timeout)

    def wait_healthy(self, members: list[EtcdMember], timeout: float = 30) -> float:
        started = time.monotonic()
        while not all(member.healthy() for member in members):
            dead = [m.name for m in members if not m.running]
            if dead or time.monotonic() - started > timeout:
                logs = "\n".join(
                    m.log_path.read_text(errors="replace")[-1500:]
                    for m in members
                    if m.log_path.exists()
                )
                raise AssertionError(f"etcd members not healthy (exited: {dead}):\n{logs}")
            time.sleep(0.1)
        return time.monotonic() - started

    def close(self) -> None:
        for member in self.members:
            member.stop()
