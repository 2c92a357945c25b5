"""Fixtures: a real registry holding a busybox image, and real `dockyard-agent` processes.

Every agent runs with its own state dir, port and cgroup parent; teardown kills it, then
kills and deletes its containers through the runc root under the state dir, kills their
conmons, unmounts overlays under the state dir and removes the cgroups, also when the
test failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import containers_pb2_grpc, images_pb2_grpc
from dockyard.v1 import images_pb2 as ipb
from tests.images.conftest import RegistryServer, _start
from tests.ports import free_port
from tests.runtime.conftest import _have_runc, cleanup_everything

BIN = Path(sys.executable).parent
BUILD = [sys.executable, "-m", "dockyard.agent.images.build"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_runc():
        return
    skip = pytest.mark.skip(reason="needs root, runc, conmon and /bin/busybox")
    for item in items:
        if "runc" in item.keywords and "tests/agent/" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class ImageRegistry:
    """The session's registry and the busybox image pushed to it."""

    server: RegistryServer
    busybox: str
    digest: str


@pytest.fixture(scope="session")
def image_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageRegistry]:
    """A docker-registry with `<host>/test/busybox:latest` (built from /bin/busybox)."""
    tmp = tmp_path_factory.mktemp("agent-registry")
    for host, root in _start(tmp):
        ref = f"{host}/test/busybox:latest"
        done = subprocess.run(
            [*BUILD, "busybox", "--tag", ref, "--push"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        yield ImageRegistry(RegistryServer(host, root), ref, done.stdout.strip())


@dataclass
class Agent:
    """One `dockyard-agent run --runtime runc` process and stubs to its API."""

    state_dir: Path
    port: int
    cgroup_parent: str
    log_path: Path
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def runc_root(self) -> Path:
        return self.state_dir / "runtime" / "runc"

    def start(self, timeout: float = 30) -> Agent:
        args = [
            str(BIN / "dockyard-agent"),
            "run",
            "--controller",
            f"127.0.0.1:{free_port()}",
            "--listen",
            self.address,
            "--state-dir",
            str(self.state_dir),
            "--runtime",
            "runc",
            "--cgroup-parent",
            self.cgroup_parent,
            "--log-level",
            "debug",
            "--insecure",
            "--docker-api-socket",  # not the host's /run/dockyard/docker.sock (extra may set one)
            "",
            *self.extra,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.channel = grpc.insecure_channel(self.address)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited {self.process.returncode}:\n{self.log()}")
            try:
                self.images.List(ipb.ListImagesRequest(), timeout=1)
                return self
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"agent did not answer:\n{self.log()}") from None
                time.sleep(0.05)

    @property
    def containers(self) -> containers_pb2_grpc.ContainersStub:
        assert self.channel is not None
        return containers_pb2_grpc.ContainersStub(self.channel)

    @property
    def images(self) -> images_pb2_grpc.ImagesStub:
        assert self.channel is not None
        return images_pb2_grpc.ImagesStub(self.channel)

    def crash(self) -> None:
        """SIGKILL the agent process only (its containers' conmons live on)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(15)
        self._close_channel()

    def terminate(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(15)
        self._close_channel()
        return code

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def kill_all(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(15)
        self._close_channel()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    # helpers -----------------------------------------------------------------

    def pull(self, ref: str) -> list[ipb.ImageProgress]:
        return list(self.images.Pull(ipb.PullImageRequest(image=ref), timeout=60))

    def run(self, image: str, *command: str, **fields: Any) -> tuple[cpb.ContainerRecord, int]:
        """Create, start and wait; returns the record after the exit and the exit code."""
        record = self.containers.Create(
            cpb.CreateContainerRequest(image=image, command=list(command), **fields), timeout=30
        )
        self.containers.Start(cpb.ContainerRef(container=record.id), timeout=30)
        exit_info = self.containers.Wait(cpb.ContainerRef(container=record.id), timeout=60)
        return record, exit_info.exit_code

    def logs(self, ref: str, **fields: Any) -> bytes:
        lines = self.containers.Logs(cpb.LogsRequest(container=ref, **fields), timeout=30)
        return b"".join(line.data for line in lines)

    def inspect(self, ref: str) -> cpb.ContainerRecord:
        return self.containers.Inspect(cpb.ContainerRef(container=ref), timeout=10)


def wait_until(predicate: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    """Makes agents; teardown kills them and everything their containers left behind."""
    made: list[Agent] = []

    def make(
        state_dir: Path | None = None,
        port: int | None = None,
        extra: list[str] | None = None,
        cgroup_parent: str | None = None,
    ) -> Agent:
        agent = Agent(
            state_dir=state_dir or tmp_path / f"agent{len(made)}",
            port=port or free_port(),
            cgroup_parent=cgroup_parent or f"dockyard-test-{uuid.uuid4().hex[:8]}",
            log_path=tmp_path / f"agent{len(made)}.log",
            extra=extra or [],
        )
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            agent.kill_all()
        for agent in made:
            cleanup_everything(agent.state_dir / "runtime", agent.cgroup_parent)


@pytest.fixture
def agent(agent_factory: Any, image_registry: ImageRegistry) -> Agent:
    """A running agent that has pulled the test busybox image."""
    started: Agent = agent_factory().start()
    events = started.pull(image_registry.busybox)
    assert events[-1].done
    return started
