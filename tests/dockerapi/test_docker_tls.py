"""The Docker API over TCP: the cluster's mutual TLS with Docker's own `--tlsverify`
(admin only), plain TCP only when asked for. A hollow agent of a real cluster (no
containers needed: /_ping, /version, /info and a listing answer)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cluster
from tests.dockerapi.conftest import DOCKER
from tests.ports import free_port

pytestmark = pytest.mark.skipif(not Path(DOCKER).exists(), reason="needs Debian's docker CLI")


def docker(
    *args: str, cert_path: Path | None = None, verify: bool = True, config: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(config)
    if cert_path is not None:
        env["DOCKER_CERT_PATH"] = str(cert_path)
        if verify:
            env["DOCKER_TLS_VERIFY"] = "1"
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def user_identity(cluster: Cluster, name: str, role: str) -> Path:
    out = cluster.root / name
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        name,
        "--role",
        role,
        "--state-dir",
        str(cluster.root / "controller"),
        "--context",
        name,
        "--out",
        str(out),
    )
    return out


def test_mutual_tls_admin_only(cluster_factory: Any, tmp_path: Path) -> None:
    cluster: Cluster = cluster_factory()
    cluster.start_controller()
    port = free_port()
    cluster.start_agent(
        "n1", extra=["--docker-api-socket", "", "--docker-api-listen", f"127.0.0.1:{port}"]
    )
    host = f"tcp://127.0.0.1:{port}"
    config = tmp_path / "docker-config"
    config.mkdir()
    # the admin context's files, as Docker wants them (`dockyard context export --docker`)
    exported = tmp_path / "docker-certs"
    done = subprocess.run(
        [str(BIN / "dockyard"), "context", "export", "--docker", str(exported), "admin"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"export DOCKER_CERT_PATH={exported} DOCKER_TLS_VERIFY=1"
    assert sorted(p.name for p in exported.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (exported / "key.pem").stat().st_mode & 0o077 == 0

    def up() -> bool:
        return docker("-H", host, "version", cert_path=exported, config=config).returncode == 0

    cluster.wait_for(up, "the Docker API over TLS", 20)
    info = json.loads(
        docker(
            "-H", host, "info", "--format", "{{json .}}", cert_path=exported, config=config
        ).stdout
    )
    assert info["Swarm"]["NodeID"] and info["Name"] == "n1"
    assert docker("-H", host, "ps", "-a", cert_path=exported, config=config).returncode == 0

    # no client certificate: the TLS handshake refuses the connection
    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    (anonymous / "ca.pem").write_bytes((exported / "ca.pem").read_bytes())
    refused = docker(
        "-H", host, "--tls", "--tlscacert", str(anonymous / "ca.pem"), "version", config=config
    )
    assert refused.returncode != 0 and "Server:" not in refused.stdout

    # plain HTTP to the TLS port gets nothing
    plain = docker("-H", host, "version", config=config)
    assert plain.returncode != 0 and "Server:" not in plain.stdout

    # a read-only identity of the cluster: 403 (the Docker API is root on the node)
    viewer = user_identity(cluster, "viewer", "read-only")
    forbidden = docker("-H", host, "ps", cert_path=viewer, config=config)
    assert forbidden.returncode != 0
    assert "may not use this agent's Docker API" in forbidden.stderr


def test_plain_tcp_needs_the_insecure_flag(tmp_path: Path) -> None:
    """An agent of no cluster (no controller answers: it keeps retrying, and serves)."""
    port = free_port()
    args = [
        str(BIN / "dockyard-agent"),
        "run",
        "--controller",
        f"127.0.0.1:{free_port()}",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "state"),
        "--runtime",
        "hollow",
        "--insecure",
        "--docker-api-socket",
        "",
        "--docker-api-listen",
        f"127.0.0.1:{port}",
    ]
    refused = subprocess.run(
        args, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert refused.returncode != 0
    assert "--docker-api-insecure" in refused.stderr
    log = tmp_path / "agent.log"
    sock = tmp_path / "run" / "docker.sock"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [*args, "--docker-api-insecure", "--docker-api-socket", str(sock)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        config = tmp_path / "docker-config"
        config.mkdir()
        deadline = time.monotonic() + 20
        while docker("-H", f"tcp://127.0.0.1:{port}", "version", config=config).returncode:
            assert time.monotonic() < deadline and agent.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "INSECURE" in log.read_text()
        # the socket as docker.sock is: 0660, the docker group when the host has one
        mode = sock.stat()
        assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
        with contextlib.suppress(KeyError):
            assert mode.st_gid == grp.getgrnam("docker").gr_gid
        assert docker("-H", f"unix://{sock}", "version", config=config).returncode == 0
    finally:
        agent.terminate()
        agent.wait(15)
    assert agent.returncode == 0
    assert not sock.exists()  # stopping removes it
