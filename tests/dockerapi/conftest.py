"""Fixtures: a real runc agent serving the Docker API on a unix socket, driven by real
clients (Debian's docker CLI, Docker's Python SDK), never by a client of our own.

`docker_agent` is module-scoped (one agent per test module): an agent on its own bridge
and /24 (as `tests/network`), with `busybox:latest` in its store (the session registry's
busybox, pulled and tagged). Teardown kills the agent, its containers and its network,
also when a test failed. `docker_cli` runs `/usr/bin/docker -H unix://SOCKET` with a
temporary DOCKER_CONFIG (the user's ~/.docker is never read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard.v1 import images_pb2 as ipb
from tests.agent.conftest import Agent, ImageRegistry, image_registry
from tests.network.conftest import free_subnet, have_network
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything, cleanup_network

__all__ = ["DockerAgent", "image_registry"]

DOCKER = "/usr/bin/docker"
BUSYBOX = "busybox:latest"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if have_network() and shutil.which(DOCKER):
        return
    skip = pytest.mark.skip(
        reason="needs root, runc, conmon, the CNI plugins and Debian's docker CLI"
    )
    for item in items:
        if "tests/dockerapi/" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class DockerAgent:
    """An agent with the Docker API on `socket`; `docker(...)` runs the real CLI at it."""

    agent: Agent
    socket: Path
    bridge: str
    subnet: str
    docker_config: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = str(self.docker_config)
        return env

    def docker(
        self, *args: str, timeout: float = 60, input: str | None = None, host: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, "-H", host or self.host, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        done = self.docker(*args, timeout=timeout)
        assert done.returncode == 0, (
            f"docker {' '.join(args)} exited {done.returncode}: {done.stderr}\n"
            f"--- agent log ---\n{self.agent.log()}"
        )
        return done.stdout

    def client(self, **kwargs: Any) -> Any:
        """Docker's Python SDK on the socket."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60, **kwargs)


def start_docker_agent(
    root: Path, registry: ImageRegistry, extra: list[str] | None = None
) -> tuple[DockerAgent, Callable[[], None]]:
    """A started agent with busybox:latest; and its teardown."""
    bridge = f"dyt{uuid.uuid4().hex[:8]}"
    subnet = free_subnet()
    socket = root / "docker.sock"
    agent = Agent(
        state_dir=root / "state",
        port=free_port(),
        cgroup_parent=f"dockyard-test-{uuid.uuid4().hex[:8]}",
        log_path=root / "agent.log",
        extra=[
            "--bridge",
            bridge,
            "--bridge-subnet",
            subnet,
            "--docker-api-socket",
            str(socket),
            *(extra or []),
        ],
    )
    under_test = DockerAgent(agent, socket, bridge, subnet, root / "docker-config")
    under_test.docker_config.mkdir()

    def teardown() -> None:
        agent.kill_all()
        cleanup_everything(agent.state_dir / "runtime", agent.cgroup_parent)
        cleanup_network(agent.state_dir / "network", bridge, [subnet.rsplit(".", 1)[0] + "."])

    try:
        agent.start()
        assert agent.pull(registry.busybox)[-1].done
        agent.images.Tag(ipb.TagImageRequest(source=registry.busybox, target=BUSYBOX), timeout=30)
    except BaseException:
        teardown()
        raise
    return under_test, teardown


@pytest.fixture(scope="module")
def docker_agent(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry
) -> Iterator[DockerAgent]:
    """One agent (Docker API on a unix socket) shared by a module's tests."""
    under_test, teardown = start_docker_agent(tmp_path_factory.mktemp("docker-api"), image_registry)
    try:
        yield under_test
    finally:
        teardown()
