"""The control plane end to end: a real controller (with embedded etcd), real
agent processes and the real CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cluster, LoopThread


def start_cluster(cluster_factory: Callable[..., Cluster], agents: int = 3) -> Cluster:
    cluster = cluster_factory()
    cluster.start_controller()
    for i in range(1, agents + 1):
        cluster.start_agent(f"n{i}")
    cluster.wait_for(
        lambda: [n["status"]["state"] for n in cluster.nodes().values()] == ["READY"] * agents,
        f"{agents} nodes READY",
    )
    return cluster


def test_nodes_join_and_report_their_host(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = start_cluster(cluster_factory)
    nodes = cluster.nodes()
    assert sorted(nodes) == ["n1", "n2", "n3"]
    for node in nodes.values():
        assert int(node["description"]["resources"]["nano_cpus"]) > 0
        assert int(node["description"]["resources"]["memory_bytes"]) > 0
        assert node["spec"]["availability"] == "ACTIVE"
        assert node["status"]["last_heartbeat"]
    table = cluster.cli("node", "ls").stdout
    assert "READY" in table and "n2" in table and "LAST HEARTBEAT" in table
    record = json.loads(cluster.cli("node", "inspect", "n1", "-o", "json").stdout)
    assert record[0]["id"] == nodes["n1"]["id"]
    # The controller runs on uvloop, the runc agent on asyncio's loop (common/event_loop.py:
    # libuv pipes a child's stdio through sockets, which nft's /dev/stdin cannot open).
    assert cluster.controller is not None
    assert "uvloop.Loop" in cluster.controller.log(), cluster.controller.log()[-2000:]
    agent_log = cluster.agents["n1"].log()
    assert '"loop": "asyncio.unix_events._UnixSelectorEventLoop"' in agent_log, agent_log[-2000:]


def test_killed_agent_goes_down_and_comes_back_as_the_same_node(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory)
    node_id = cluster.nodes()["n2"]["id"]
    cluster.agents["n2"].kill()
    took = cluster.wait_for(lambda: cluster.node_state("n2") == "DOWN", "n2 DOWN", 10)
    assert took < cluster.grace + 3
    assert cluster.node_state("n1") == "READY"
    cluster.start_agent("n2")
    cluster.wait_for(lambda: cluster.node_state("n2") == "READY", "n2 READY again")
    assert cluster.nodes()["n2"]["id"] == node_id
    assert len(cluster.nodes()) == 3


def test_node_update_is_stored_and_survives_a_controller_restart(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory)
    cluster.cli(
        "node",
        "update",
        "--label-add",
        "zone=a",
        "--label-add",
        "ssd",
        "--availability",
        "drain",
        "n1",
    )
    node = cluster.nodes()["n1"]
    assert node["spec"]["labels"] == {"zone": "a", "ssd": ""}
    assert node["spec"]["availability"] == "DRAIN"
    assert cluster.controller is not None
    cluster.controller.stop()
    cluster.start_controller()
    node = cluster.nodes()["n1"]
    assert node["spec"]["labels"] == {"zone": "a", "ssd": ""}
    assert node["spec"]["availability"] == "DRAIN"
    cluster.wait_for(
        lambda: (
            all(n["status"]["state"] == "READY" for n in cluster.nodes().values())
            and len(cluster.nodes()) == 3
        ),
        "agents reconnected by themselves",
        30,
    )
    cluster.cli("node", "update", "--label-rm", "ssd", "--availability", "active", "n1")
    assert cluster.nodes()["n1"]["spec"]["labels"] == {"zone": "a"}


def test_bad_node_updates_are_refused_and_write_nothing(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory, agents=1)
    before = cluster.nodes()["n1"]
    cases = [
        (["node", "update", "--label-add", "zone=a", "nope"], "node 'nope' not found"),
        (["node", "update", "--label-add", "=x", "n1"], "malformed label '=x'"),
        (["node", "update", "--availability", "sometimes", "n1"], "'sometimes' is not one of"),
        (["node", "update", "--label-rm", "absent", "n1"], "has no label 'absent'"),
        (["node", "update", "--rename", "Bad Name!", "n1"], "invalid name"),
        (["node", "inspect", "ghost"], "node 'ghost' not found"),
    ]
    for args, message in cases:
        result = cluster.cli(*args, check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    after = cluster.nodes()["n1"]
    assert after["meta"]["version"] == before["meta"]["version"] or (
        after["spec"] == before["spec"]
    )
    assert after["spec"] == before["spec"]


def test_a_second_agent_cannot_take_a_live_nodes_name(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory, agents=1)
    impostor = cluster.start_agent("n1-copy")
    impostor.args[impostor.args.index("--name") + 1] = "n1"
    impostor.kill()
    impostor.start()
    assert impostor.process is not None
    assert impostor.process.wait(20) == 1
    assert "node name 'n1' is held by live node" in impostor.log()
    assert sorted(cluster.nodes()) == ["n1"]


def test_removing_a_down_node_frees_its_name(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = start_cluster(cluster_factory, agents=2)
    refused = cluster.cli("node", "rm", "n2", check=False)
    assert refused.returncode == 1 and "is READY" in refused.stderr
    cluster.agents["n2"].kill()
    cluster.wait_for(lambda: cluster.node_state("n2") == "DOWN", "n2 DOWN")
    cluster.cli("node", "rm", "n2")
    assert sorted(cluster.nodes()) == ["n1"]


def test_info_and_version_against_controller_and_agent(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory, agents=1)
    info = json.loads(cluster.cli("info", "-o", "json").stdout)
    assert info["kind"] == "controller"
    assert info["nodes_ready"] == 1 and info["is_leader"] is True
    assert info["etcd_embedded"] is True
    agent = cluster.agent_address("n1")
    agent_info = json.loads(cluster.cli("info", "-o", "json", host=agent).stdout)
    assert agent_info["kind"] == "agent"
    assert agent_info["name"] == "n1" and agent_info["session_state"] == "connected"
    versions = json.loads(cluster.cli("-H", agent, "version", "-o", "json").stdout)
    # -H given twice (the fixture's and this one): both daemons answer.
    assert [s["component"] for s in versions["servers"]] == [
        "dockyard-controller",
        "dockyard-agent",
    ]
    not_controller = cluster.cli("node", "ls", check=False, host=agent)
    assert not_controller.returncode == 1
    assert f"{agent} is not a controller" in not_controller.stderr


def test_controller_carries_on_when_etcd_restarts(
    cluster_factory: Callable[..., Cluster], loop_thread: LoopThread
) -> None:
    from dockyard.common.etcd_server import EtcdServer

    cluster = cluster_factory()
    etcd = EtcdServer(cluster.root / "external-etcd" / "data", log_path=cluster.root / "etcd.log")
    loop_thread.run(etcd.start())
    try:
        cluster.etcd_endpoints = [etcd.endpoint]
        cluster.start_controller()
        cluster.start_agent("n1")
        cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
        port = etcd.client_port
        loop_thread.run(etcd.stop())
        down = cluster.cli("node", "ls", check=False)
        assert down.returncode != 0 and "etcd" in down.stderr
        etcd.client_port = port
        loop_thread.run(etcd.start())
        cluster.wait_for(
            lambda: cluster.cli_ok("node", "update", "--label-add", "x=1", "n1"),
            "writes work again",
            20,
        )
        assert cluster.nodes()["n1"]["spec"]["labels"] == {"x": "1"}
        assert cluster.controller is not None and cluster.controller.process is not None
        assert cluster.controller.process.poll() is None
        cluster.agents["n1"].kill()
        cluster.wait_for(lambda: cluster.node_state("n1") == "DOWN", "monitor still works")
    finally:
        cluster.stop()
        loop_thread.run(etcd.stop())


def test_controller_start_fails_clearly_without_etcd(
    cluster_factory: Callable[..., Cluster],
) -> None:
    import subprocess

    from tests.conftest import BIN
    from tests.ports import free_port

    cluster = cluster_factory()
    start = time.monotonic()
    result = subprocess.run(
        [
            str(BIN / "dockyard-controller"),
            "run",
            "--listen",
            cluster.address,
            "--etcd",
            f"127.0.0.1:{free_port()}",
            "--etcd-timeout",
            "2",
            "--state-dir",
            str(cluster.root / "c"),
            "--insecure",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach etcd at 127.0.0.1" in result.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("command", ["run", "init", "join"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--etcd", "127.0.0.1:2379", "--etcd-cacert", "CA"], "needs all three of --etcd-cacert"),
        (["--etcd-cacert", "CA", "--etcd-cert", "CA", "--etcd-key", "CA"], "need --etcd"),
        (
            ["--etcd", "127.0.0.1:2379", "--etcd-server-name", "localhost"],
            "--etcd-server-name needs",
        ),
        (
            [
                "--etcd",
                "127.0.0.1:2379",
                "--etcd-cacert",
                "missing",
                "--etcd-cert",
                "CA",
                "--etcd-key",
                "CA",
            ],
            "cannot read etcd TLS material",
        ),
    ],
)
def test_bad_etcd_tls_flags_are_refused_and_write_nothing(
    tmp_path: Path, command: str, flags: list[str], message: str
) -> None:
    """Client TLS to an external etcd: all three files, only with --etcd, readable."""
    import os
    import subprocess

    from tests.conftest import BIN

    (tmp_path / "CA").write_text("pem")
    flags = [str(tmp_path / f) if f in ("CA", "missing") else f for f in flags]
    head = ["join", "--token", "x", "127.0.0.1:1"] if command == "join" else [command]
    if command == "join" and message == "need --etcd":
        message = "Missing option '--etcd'"  # join always needs it
    state = tmp_path / "state"
    env = {**os.environ, "DOCKYARD_CONFIG": str(tmp_path / "cfg")}
    args = [str(BIN / "dockyard-controller"), *head, "--state-dir", str(state), *flags]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not state.exists() and not (tmp_path / "cfg").exists()


@pytest.mark.parametrize("daemon", ["dockyard-controller", "dockyard-agent"])
def test_a_taken_listen_port_is_one_clear_line(tmp_path: Path, daemon: str) -> None:
    import socket
    import subprocess

    from tests.conftest import BIN

    with socket.socket() as holder:  # no SO_REUSEPORT: grpc cannot share it
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = (
            ["--http-listen", ""]
            if daemon == "dockyard-controller"
            else ["--controller", "127.0.0.1:1", "--runtime", "hollow"]
        )
        result = subprocess.run(
            [
                str(BIN / daemon),
                "run",
                "--insecure",
                "--listen",
                f"127.0.0.1:{port}",
                "--state-dir",
                str(tmp_path / "state"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_daemon_is_one_clear_line(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    result = cluster.cli("node", "ls", check=False)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"dockyard: cannot reach controller at {cluster.address}: connection refused"
    )


def test_two_controllers_one_leads_and_the_other_takes_over(
    cluster_factory: Callable[..., Cluster], loop_thread: LoopThread
) -> None:
    from dockyard.common.etcd_server import EtcdServer

    first = cluster_factory()
    second = cluster_factory()
    etcd = EtcdServer(first.root / "shared-etcd" / "data", log_path=first.root / "etcd.log")
    loop_thread.run(etcd.start())
    try:
        first.etcd_endpoints = second.etcd_endpoints = [etcd.endpoint]
        second.join_from = first  # with a controller token, as a second manager joins
        first.start_controller()
        second.start_controller()
        info = json.loads(second.cli("info", "-o", "json").stdout)
        assert info["is_leader"] is False and info["leader_address"] == first.address
        # The agent only knows the follower: it is sent on to the leader.
        second.start_agent("n1")
        first.wait_for(lambda: first.node_state("n1") == "READY", "n1 READY via the leader")
        assert second.nodes()["n1"]["status"]["state"] == "READY"  # both serve reads
        assert first.controller is not None
        first.controller.kill()
        second.wait_for(
            lambda: json.loads(second.cli("info", "-o", "json").stdout)["is_leader"],
            "the second controller to lead",
            20,
        )
        second.wait_for(
            lambda: json.loads(second.cli("info", "-o", "json").stdout)["agent_sessions"] == 1,
            "the agent to reconnect to the new leader",
            30,
        )
    finally:
        first.stop()
        second.stop()
        loop_thread.run(etcd.stop())
