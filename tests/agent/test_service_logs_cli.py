"""`dockyard service logs` on real runc tasks: the task prefix, --raw, --tail, --since,
--timestamps, and with two targets each line led by its target; `image pull --all-nodes`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from tests.agent.conftest import ImageRegistry
from tests.conftest import Cluster
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.registry]


@pytest.fixture
def runc_cluster(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry
) -> Iterator[Cluster]:
    cluster = cluster_factory(resolve_image="always")
    cgroup = f"dockyard-test-{cluster.root.name}-lg1"
    try:
        cluster.start_controller()
        cluster.start_agent("lg1", runtime="runc", extra=["--cgroup-parent", cgroup])
        cluster.wait_for(lambda: cluster.node_state("lg1") == "READY", "lg1 READY")
        yield cluster
    finally:
        cluster.stop()
        cleanup_everything(cluster.root / "agent-lg1" / "runtime", cgroup)


def test_service_logs_flags_and_fan_out(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    cluster = runc_cluster
    cluster.cli(
        "service",
        "create",
        "--name",
        "talk",
        "--timeout",
        "60s",
        image_registry.busybox,
        "sh",
        "-c",
        "echo one; echo two; sleep 300",
        timeout=90,
    )

    def logs(*args: str) -> list[str]:
        return cluster.cli("service", "logs", *args, "talk").stdout.splitlines()

    deadline = time.monotonic() + 20
    while logs("--raw") != ["one", "two"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert logs("--raw") == ["one", "two"]
    prefixed = logs()
    assert [re.sub(r"^talk\.1\.[0-9a-f]{12}@lg1 \| ", "", line) for line in prefixed] == [
        "one",
        "two",
    ], prefixed
    assert logs("--raw", "--tail", "1") == ["two"]
    assert logs("--raw", "--since", "1h") == ["one", "two"]
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert logs("--raw", "--since", future) == []
    stamped = logs("--raw", "-t")
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (one|two)$", line) for line in stamped
    ), stamped
    both = cluster.cli("-H", cluster.address, "service", "logs", "--raw", "talk").stdout
    assert sorted(both.splitlines()) == sorted(
        [f"{cluster.address} one", f"{cluster.address} two"] * 2
    )


def test_a_tty_service_has_a_terminal_and_its_logs(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    """`service create -t`: the task's process has a terminal (conmon's pty), and its
    output (one stream, with the terminal's CRLF) still reaches `service logs`."""
    cluster = runc_cluster
    script = "if [ -t 0 ] && [ -t 1 ]; then echo has-tty; else echo no-tty; fi; sleep 300"
    cluster.cli(
        "service", "create", "-t", "--name", "term", "--timeout", "60s",
        image_registry.busybox, "sh", "-c", script, timeout=90,
    )  # fmt: skip

    def logs() -> list[str]:
        out = cluster.cli("service", "logs", "--raw", "term").stdout
        return [line.rstrip("\r") for line in out.splitlines()]

    deadline = time.monotonic() + 20
    while not logs() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert logs() == ["has-tty"]


def test_image_pull_on_every_node(runc_cluster: Cluster, image_registry: ImageRegistry) -> None:
    cluster = runc_cluster
    pulled = cluster.cli("image", "pull", "--all-nodes", image_registry.busybox, timeout=120)
    lines = pulled.stdout.splitlines()
    assert lines[0].split() == ["TARGET", "IMAGE", "DIGEST"]
    assert [line.split()[:2] for line in lines[1:]] == [["lg1", image_registry.busybox]]
    assert lines[1].split()[2] == image_registry.digest
    agent = cluster.agent_address("lg1")
    listed = cluster.cli("images", "--format", "{{.Repository}}:{{.Tag}}", host=agent).stdout
    assert image_registry.busybox in listed.split()
