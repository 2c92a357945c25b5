"""docker-compose (Debian's 1.29) against a runc agent's Docker API: `up -d` and `down -v`
of a two-service project with its network and a named volume; the client service
reaches the web service by its name through the agent's DNS."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.dockerapi.conftest import DockerAgent

pytestmark = [pytest.mark.runc, pytest.mark.registry]

COMPOSE = "/usr/bin/docker-compose"
PROJECT = """\
version: "3.7"
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "echo hello-from-web > /data/index.html && httpd -f -p 8080 -h /data"]
    volumes:
      - data:/data
  client:
    image: busybox:latest
    depends_on: [web]
    command:
      - sh
      - -c
      - >-
        for i in $$(seq 1 40); do wget -q -O - http://web:8080/index.html && exit 0;
        sleep 0.25; done; exit 1
volumes:
  data: {}
"""


def _compose(agent: DockerAgent, project_dir: Path, name: str, *args: str) -> str:
    env = {**agent.env(), "DOCKER_HOST": agent.host, "COMPOSE_INTERACTIVE_NO_CLI": "1"}
    done = subprocess.run(
        [COMPOSE, "--no-ansi", "-p", name, *args],
        cwd=project_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (
        f"docker-compose {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n"
        f"{done.stderr}\n--- agent log ---\n{agent.agent.log()}"
    )
    return done.stdout + done.stderr


@pytest.mark.skipif(shutil.which(COMPOSE) is None, reason="needs Debian's docker-compose")
def test_compose_up_and_down(docker_agent: DockerAgent, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(PROJECT)
    name = f"dy{uuid.uuid4().hex[:6]}"
    try:
        _compose(docker_agent, tmp_path, name, "up", "-d")
        networks = docker_agent.ok("network", "ls", "--format", "{{.Name}}").split()
        assert f"{name}_default" in networks
        assert f"{name}_data" in docker_agent.ok("volume", "ls", "-q").split()
        code = docker_agent.ok("wait", f"{name}_client_1", timeout=60).strip()
        logs = docker_agent.ok("logs", f"{name}_client_1")
        assert code == "0", logs
        assert "hello-from-web" in logs
        assert f"{name}_web_1" in docker_agent.ok("ps", "--format", "{{.Names}}")
    finally:
        _compose(docker_agent, tmp_path, name, "down", "-v")
    assert f"{name}_" not in docker_agent.ok("ps", "-a", "--format", "{{.Names}}")
    assert f"{name}_default" not in docker_agent.ok("network", "ls", "--format", "{{.Name}}")
    assert f"{name}_data" not in docker_agent.ok("volume", "ls", "-q")
