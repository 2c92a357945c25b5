"""One CLI call to three real clusters (TLS, each with its own state dir and ports),
one of them stopped: the live ones print, the dead one's line names the cause, exit 1."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, Cluster
from tests.ports import free_port


@pytest.fixture
def clusters(cluster_factory: Callable[..., Cluster]) -> Iterator[list[Cluster]]:
    """Three clusters with one hollow node each (named after the cluster); the third's
    controller is stopped once its context exists."""
    made = []
    for index in range(3):
        cluster = cluster_factory()
        cluster.start_controller()
        cluster.start_agent(f"node-of-c{index}")
        made.append(cluster)
    for index, cluster in enumerate(made[:2]):
        cluster.wait_for(
            lambda c=cluster, i=index: c.node_state(f"node-of-c{i}") == "READY", "node READY"
        )
    yield made


def dockyard(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = Cluster(config).env()  # a clean environment with DOCKYARD_CONFIG = config
    env["DOCKYARD_CONFIG"] = str(config)
    return subprocess.run(
        [str(BIN / "dockyard"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def config(tmp_path: Path, clusters: list[Cluster]) -> Path:
    """A CLI config with contexts c0, c1, c2 (each with its cluster's admin TLS) and a
    group `all` of the three; then c2's controller stops."""
    directory = tmp_path / "fanout-config"
    for index, cluster in enumerate(clusters):
        pki = cluster.pki / "admin"
        created = dockyard(
            directory,
            "context",
            "create",
            f"c{index}",
            "--host",
            cluster.address,
            "--tlscacert",
            str(pki / "ca.pem"),
            "--tlscert",
            str(pki / "cert.pem"),
            "--tlskey",
            str(pki / "key.pem"),
        )
        assert created.returncode == 0, created.stderr
    group = dockyard(directory, "context", "create", "all", "--member", "c0,c1", "--member", "c2")
    assert group.returncode == 0, group.stderr
    clusters[2].stop()
    return directory


def check_table(result: subprocess.CompletedProcess[str], clusters: list[Cluster]) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["TARGET", "ID", "NAME"]
    rows = sorted(line.split()[0] + " " + line.split()[2] for line in lines[1:])
    assert rows == ["c0 node-of-c0", "c1 node-of-c1"]
    [failure] = result.stderr.splitlines()
    assert failure == (
        f"dockyard: c2: cannot reach controller at {clusters[2].address}: connection refused"
    )


def test_node_ls_on_three_clusters_one_stopped(config: Path, clusters: list[Cluster]) -> None:
    check_table(dockyard(config, "--context", "c0,c1,c2", "node", "ls"), clusters)
    check_table(dockyard(config, "--context", "all", "node", "ls"), clusters)
    check_table(dockyard(config, "--all-contexts", "node", "ls"), clusters)
    # -o json wraps each record with its target
    result = dockyard(config, "-c", "all", "node", "ls", "-o", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert sorted((d["target"], d["record"]["spec"]["name"]) for d in data) == [
        ("c0", "node-of-c0"),
        ("c1", "node-of-c1"),
    ]
    assert "dockyard: c2: cannot reach controller" in result.stderr
    # all live: exit 0; -q prints the IDs
    result = dockyard(config, "-c", "c0,c1", "node", "ls", "-q")
    assert result.returncode == 0, result.stderr
    nodes = {
        c: json.loads(dockyard(config, "-c", c, "node", "ls", "-o", "json").stdout)[0]["id"]
        for c in ("c0", "c1")
    }
    assert sorted(result.stdout.split()) == sorted(nodes.values())
    # every read command
    for args in (["service", "ls"], ["ps"], ["secret", "ls"], ["info"], ["version"]):
        result = dockyard(config, "-c", "all", *args)
        assert result.returncode == 1, (args, result.stderr)
        what = "daemon" if args[0] in ("info", "version") else "controller"
        assert (
            f"dockyard: c2: cannot reach {what} at {clusters[2].address}: connection refused"
        ) in result.stderr
    info = dockyard(config, "-c", "all", "info", "-o", "json")
    assert sorted(d["target"] for d in json.loads(info.stdout)) == ["c0", "c1"]
    version = dockyard(config, "-c", "all", "version", "-o", "json")
    data = json.loads(version.stdout)
    assert data["client"]["component"] == "dockyard"
    assert sorted(s["target"] for s in data["servers"]) == ["c0", "c1"]
    inspected = dockyard(config, "-c", "c0,c1", "node", "inspect", "node-of-c0")
    assert inspected.returncode == 1
    assert [d["target"] for d in json.loads(inspected.stdout)] == ["c0"]
    assert "dockyard: c1: " in inspected.stderr and "node-of-c0" in inspected.stderr


def test_several_agents_of_one_cluster_with_h(config: Path, clusters: list[Cluster]) -> None:
    """-H repeated, with the TLS material of one context: each agent answers for itself,
    the target column names its address."""
    cluster = clusters[0]
    cluster.start_agent("second")
    first, second = cluster.agent_address("node-of-c0"), cluster.agent_address("second")
    cluster.wait_for(lambda: cluster.node_state("second") == "READY", "second READY")
    result = dockyard(config, "-c", "c0", "-H", first, "-H", second, "info", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted((d["target"], d["name"]) for d in data) == sorted(
        [(first, "node-of-c0"), (second, "second")]
    )


def test_a_target_that_never_answers_times_out_and_the_others_print(
    config: Path, clusters: list[Cluster]
) -> None:
    """A listener that accepts and never speaks: with --target-timeout, its line says
    so and the live cluster's rows still print."""
    server = socket.socket()
    server.bind(("127.0.0.1", free_port()))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    silent = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        created = dockyard(config, "context", "create", "silent", "--host", silent)
        assert created.returncode == 0, created.stderr
        result = dockyard(config, "--target-timeout", "2", "-c", "c0,silent", "node", "ls")
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        server.close()
    assert result.returncode == 1
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["c0"]
    [failure] = result.stderr.splitlines()
    assert failure.startswith("dockyard: silent: ")
    assert "did not answer in time" in failure or "no answer within 2 s" in failure


def test_events_of_several_clusters_lead_with_their_target(
    config: Path, clusters: list[Cluster]
) -> None:
    """`-c all events`: both live clusters' changes, each line led by its context; the
    stopped one's failure is its own stderr line."""
    import os
    import queue
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(config)
    process = subprocess.Popen(
        [str(BIN / "dockyard"), "-c", "all", "events", "-f", "type=service"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        time.sleep(2)  # the streams are open (no event is replayed: they start from now)
        for index in (0, 1):
            created = dockyard(
                config,
                "-c",
                f"c{index}",
                "service",
                "create",
                "-d",
                "--name",
                f"ev{index}",
                "busybox",
                "sleep",
                "60",
            )
            assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            any(s.startswith("c0 ") and " ev0 " in s for s in seen)
            and any(s.startswith("c1 ") and " ev1 " in s for s in seen)
        ):
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=10)
    assert any(s.startswith("c0 ") and "service created" in s and " ev0 " in s for s in seen), seen
    assert any(s.startswith("c1 ") and "service created" in s and " ev1 " in s for s in seen), seen
    assert not any(" ev1 " in s for s in seen if s.startswith("c0 "))
    assert f"dockyard: c2: cannot reach controller at {clusters[2].address}" in stderr
