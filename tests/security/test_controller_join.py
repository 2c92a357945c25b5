"""A second controller joins with a controller token, as a second Swarm manager does:
the token pins the CA, and the etcd it is given must hold that same CA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockyard.common.etcd_server import EtcdServer
from tests.conftest import Cluster, LoopThread


@pytest.fixture
def etcd(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Callable[[str], str]]:
    """Start etcd servers on demand; each is stopped at the end."""
    started: list[EtcdServer] = []

    def start(name: str) -> str:
        server = EtcdServer(tmp_path / name / "data", log_path=tmp_path / f"{name}.log")
        loop_thread.run(server.start())
        started.append(server)
        return server.endpoint

    try:
        yield start
    finally:
        for server in started:
            loop_thread.run(server.stop())


def test_a_controller_joins_with_a_controller_token_only(
    cluster_factory: Callable[..., Cluster], etcd: Callable[[str], str], tmp_path: Path
) -> None:
    first = cluster_factory()
    shared = etcd("shared")
    first.etcd_endpoints = [shared]
    first.start_controller()
    admin = ["-H", first.address, *first.tls_args()]

    def join(token: str, etcd_endpoint: str, state: Path) -> tuple[int, str]:
        result = first.run_tool(
            "dockyard-controller",
            "join",
            "--token",
            token,
            first.join_address,
            "--state-dir",
            str(state),
            "--etcd",
            etcd_endpoint,
            "--context",
            "joined",
            check=False,
        )
        return result.returncode, result.stderr

    agent_token = first.run_tool(
        "dockyard-controller", "token", "create", "--role", "agent", *admin
    ).stdout.strip()
    code, err = join(agent_token, shared, tmp_path / "a")
    assert code == 1 and "this is a node join token" in err, err
    assert not (tmp_path / "a" / "pki" / "ca-key.pem").exists()

    token = first.run_tool(
        "dockyard-controller", "token", "create", "--role", "controller", "--max-uses", "2", *admin
    ).stdout.strip()
    other = etcd("other")  # another cluster's etcd
    first.run_tool(
        "dockyard-controller",
        "init",
        "--state-dir",
        str(tmp_path / "o"),
        "--etcd",
        other,
        "--context",
        "other",
    )
    code, err = join(token, other, tmp_path / "b")
    assert code == 1 and "holds another cluster's CA" in err, err
    assert not (tmp_path / "b" / "pki" / "ca-key.pem").exists()

    refused = first.run_tool(
        "dockyard-controller",
        "init",
        "--state-dir",
        str(tmp_path / "c"),
        "--etcd",
        shared,
        check=False,
    )
    assert refused.returncode == 1 and "dockyard-controller join --token" in refused.stderr

    code, err = join(token, shared, tmp_path / "d")  # the token's second use
    assert code == 0, err
    joined = tmp_path / "d" / "pki"
    assert (joined / "ca-key.pem").read_bytes() == (first.pki / "ca-key.pem").read_bytes()
    assert (joined / "admin" / "cert.pem").exists() and (joined / "controller.pem").exists()
    code, err = join(token, shared, tmp_path / "e")
    assert code == 1 and "refused the join" in err, err
