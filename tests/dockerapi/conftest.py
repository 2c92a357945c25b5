"""Fixtures for the Docker Engine API: a real runc agent (its own bridge, subnet, state
dir and cgroup parent) serving the API on a unix socket in a temp dir, a registry with the
test busybox image, and the environment real Docker clients need (a temp DOCKER_CONFIG,
DOCKER_HOST at the socket). Teardown releases everything, also when a test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import Agent, ImageRegistry, image_registry
from tests.network.conftest import free_subnet
from tests.ports import free_port
from tests.runtime.conftest import _have_runc, cleanup_everything, cleanup_network

__all__ = ["DockerAgent", "docker_agent", "image_registry"]

DOCKER = "/usr/bin/docker"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_runc() and Path(DOCKER).exists():
        return
    skip = pytest.mark.skip(reason="needs root, runc, conmon, /bin/busybox and the docker CLI")
    for item in items:
        if "runc" in item.keywords and "tests/dockerapi/" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class DockerAgent:
    """A runc agent with the Docker API on `socket`, and a client environment for it."""

    agent: Agent
    socket: Path
    config_dir: Path
    bridge: str
    subnet: str
    busybox: str
    """The test busybox image's reference in the session's registry."""

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a Docker client aimed at this agent (never ~/.docker)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config_dir), **extra)
        return env

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run Debian's docker CLI against the agent."""
        done = subprocess.run(
            [DOCKER, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            check=False,
            input=input,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}\n{done.stderr.decode(errors='replace')}"
                f"\nagent log:\n{self.agent.log()}"
            )
        return done

    def docker_json(self, *args: str) -> Any:
        return json.loads(self.docker(*args).stdout)


def _wait_for_socket(agent: Agent, socket: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"no Docker API socket at {socket}:\n{agent.log()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def docker_agent(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry
) -> Iterator[DockerAgent]:
    """One agent per test module (tests remove what they make)."""
    root = tmp_path_factory.mktemp("docker-agent")
    bridge = f"dyd{uuid.uuid4().hex[:8]}"
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
        ],
    )
    config_dir = root / "docker-config"
    config_dir.mkdir()
    try:
        agent.start()
        _wait_for_socket(agent, socket)
        yield DockerAgent(agent, socket, config_dir, bridge, subnet, image_registry.busybox)
    finally:
        agent.kill_all()
        cleanup_everything(agent.state_dir / "runtime", agent.cgroup_parent)
        cleanup_network(agent.state_dir / "network", bridge, [subnet.rsplit(".", 1)[0] + "."])
        shutil.rmtree(root, ignore_errors=True)
