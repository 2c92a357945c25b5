"""`service create --with-registry-auth` against a registry behind htpasswd auth: the
caller's login (`dockyard login`, a private DOCKER_CONFIG) goes with the service to the
nodes, which pull with it; without it, the task fails with the registry's reason."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import BUILD
from tests.conftest import BIN, Cluster
from tests.images.conftest import RegistryServer, auth_registry
from tests.runtime.conftest import cleanup_everything

__all__ = ["auth_registry"]
pytestmark = [pytest.mark.runc, pytest.mark.registry]
NAMES = ("ra1", "ra2")


@pytest.fixture
def private_image(auth_registry: RegistryServer, tmp_path: Path) -> str:
    ref = f"{auth_registry.host}/private/busybox:latest"
    done = subprocess.run(
        [
            *BUILD,
            "busybox",
            "--tag",
            ref,
            "--push",
            "--auth-file",
            str(auth_registry.auth_file(tmp_path)),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return ref


@pytest.fixture
def runc_cluster(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    cluster = cluster_factory(resolve_image="always")
    try:
        cluster.start_controller()
        for name in NAMES:
            cluster.start_agent(
                name,
                runtime="runc",
                extra=["--cgroup-parent", f"dockyard-test-{cluster.root.name}-{name}"],
            )
        cluster.wait_for(
            lambda: (
                len(cluster.nodes()) == 2
                and all(n["status"]["state"] == "READY" for n in cluster.nodes().values())
            ),
            "2 nodes READY",
        )
        yield cluster
    finally:
        cluster.stop()
        for name in NAMES:
            cleanup_everything(
                cluster.root / f"agent-{name}" / "runtime",
                f"dockyard-test-{cluster.root.name}-{name}",
            )


def tasks(cluster: Cluster, service: str) -> list[dict[str, object]]:
    return list(json.loads(cluster.cli("service", "ps", service, "-o", "json").stdout))


def test_with_registry_auth_every_node_pulls_and_without_it_the_task_says_why(
    runc_cluster: Cluster, auth_registry: RegistryServer, private_image: str
) -> None:
    cluster = runc_cluster
    host = auth_registry.host
    missing = cluster.cli(
        "service", "create", "--with-registry-auth", "--name", "x", private_image, check=False
    )
    assert missing.returncode == 1
    assert f"no credentials for {host} (run `dockyard login {host}` first)" in missing.stderr
    login = subprocess.run(
        [str(BIN / "dockyard"), "login", "-u", "dock", "--password-stdin", host],
        input="yard-secret",
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
    )
    assert login.returncode == 0, login.stderr

    created = cluster.cli(
        "service",
        "create",
        "--with-registry-auth",
        "--mode",
        "global",
        "--name",
        "private",
        "--timeout",
        "90s",
        private_image,
        "sleep",
        "3600",
        timeout=120,
    )
    assert "private: 2/2 running" in created.stderr, created.stderr
    running = [t for t in tasks(cluster, "private") if t["status"]["state"] == "RUNNING"]  # type: ignore[index]
    assert len({t["node_id"] for t in running}) == 2
    inspected = cluster.cli("service", "inspect", "private").stdout
    assert json.loads(inspected)[0]["registry_auth"] == host
    assert (
        "yard-secret" not in inspected
        and "yard-secret" not in cluster.cli("service", "ls", "-o", "json").stdout
    )  # the credentials are never returned
    assert "@sha256:" in json.loads(inspected)[0]["spec"]["task"]["container"]["image"]

    cluster.cli(
        "service",
        "create",
        "-d",
        "--name",
        "anonymous",
        "--replicas",
        "1",
        private_image,
        "sleep",
        "3600",
    )

    def refused() -> bool:
        return any(
            "wants a username and password" in str(t["status"].get("error", ""))  # type: ignore[union-attr]
            for t in tasks(cluster, "anonymous")
        )

    cluster.wait_for(refused, "the task failing with the registry's reason", 60)
    table = cluster.cli("service", "ps", "anonymous", "--no-trunc").stdout
    assert "wants a username and password" in table
