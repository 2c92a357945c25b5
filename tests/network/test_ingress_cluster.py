"""The routing mesh end to end: `deploy/local-cluster up --hosts 2` (each runc agent in a
network namespace of its own, on a LAN bridge). A port published with `mode=ingress`
answers on both hosts' addresses, including the host that runs no task (over the ingress
overlay network's VXLAN), and spreads over the tasks on both hosts once scaled."""

from __future__ import annotations

import ipaddress
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.network.conftest import free_subnet
from tests.network.test_overlay_cluster import ok, running, wait
from tests.test_local_cluster import LocalCluster, _local_cluster, _offsets

pytestmark = [pytest.mark.runc, pytest.mark.registry, pytest.mark.slow]

WEB = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"
PORT = 18480


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp_path = tmp_path_factory.mktemp("ingress-cluster")
    for lc in _local_cluster(tmp_path, _offsets(2), 2):
        lan = ipaddress.IPv4Network(free_subnet())
        lc.up("--hosts", "2", "--lan", str(lan), "--no-sample")
        try:
            yield lc
        finally:  # kept for a failure's post-mortem (the state dir goes with `down`)
            shutil.copytree(lc.state_dir / "logs", tmp_path / "logs", dirs_exist_ok=True)


def answer(address: str, port: int = PORT) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=3) as response:
            return str(response.read().decode().strip())
    except OSError as exc:
        return f"error: {exc}"


def last_mesh_source(log: Path) -> str:
    """The source address of the node's last mesh with a port (from its log)."""
    applied = [
        event["source"]
        for line in log.read_text().splitlines()
        if '"ingress.applied"' in line and (event := json.loads(line)).get("ports")
    ]
    return applied[-1] if applied else ""


def test_an_ingress_port_answers_on_every_host(cluster: LocalCluster) -> None:
    lc = cluster
    nodes = json.loads(ok(lc, "node", "ls", "-o", "json"))
    hosts = {n["id"]: n["network"]["address"] for n in nodes}
    assert len(hosts) == 2
    publish = f"published={PORT},target=80,mode=ingress"
    ok(lc, "service", "create", "-d", "--name", "meshweb", "--max-replicas-per-node", "1",
       "--publish", publish, "busybox", "sh", "-c", WEB)  # fmt: skip
    wait(lambda: running(lc, "meshweb", 1), "meshweb running")
    (task,) = [
        t
        for t in json.loads(ok(lc, "service", "ps", "meshweb", "-o", "json"))
        if t["status"]["state"] == "RUNNING"
    ]
    without = next(address for node, address in hosts.items() if node != task["node_id"])
    served: list[str] = []
    for address in hosts.values():  # the host without a task answers too
        wait(
            lambda a=address: not answer(a).startswith("error"),
            f"port {PORT} on {address}",
            explain=lambda a=address: answer(a),
        )
        served.append(answer(address))
    assert len(set(served)) == 1
    # carried by the ingress overlay network (Swarm's), made with the first mesh port
    (ingress,) = json.loads(ok(lc, "network", "inspect", "ingress"))
    assert sorted(ingress["node_addresses"]) == sorted(hosts)
    subnet = ipaddress.IPv4Network(ingress["subnet"])
    sources = {last_mesh_source(log) for log in (lc.state_dir / "logs").glob("node-*.log")}
    # each node meshes from its ingress address (its bridge gateway only for the moment
    # before the leader gave it one: the host-gw fallback)
    assert sources == set(ingress["node_addresses"].values()), sources
    assert all(ipaddress.IPv4Address(s) in subnet for s in sources)

    ok(lc, "service", "scale", "-d", "meshweb=2")
    wait(lambda: running(lc, "meshweb", 2), "meshweb on both hosts")
    wait(
        lambda: len({answer(without) for _ in range(20)}) == 2,
        "both tasks behind one host's port",
        explain=lambda: str({answer(without) for _ in range(20)}),
    )

    taken = lc.cli("service", "create", "-d", "--name", "other", "-p", f"{PORT}:80", "busybox")
    assert taken.returncode != 0 and "already published by service meshweb" in taken.stderr

    ok(lc, "service", "rm", "meshweb")
    wait(lambda: answer(without).startswith("error"), "the port closed with its service")


def test_a_port_with_no_mode_is_the_mesh_and_its_replicas_share_hosts(
    cluster: LocalCluster,
) -> None:
    """`-p 80` (no mode, no published port): the routing mesh, on a port the leader picks
    from 30000-32767; three replicas on two hosts run (an ingress port takes no host
    port), and every host's address reaches them all."""
    lc = cluster
    hosts = [n["network"]["address"] for n in json.loads(ok(lc, "node", "ls", "-o", "json"))]
    ok(lc, "service", "create", "-d", "--name", "auto", "--replicas", "3",
       "-p", "80", "busybox", "sh", "-c", WEB)  # fmt: skip
    try:
        spec = json.loads(ok(lc, "service", "inspect", "auto"))[0]["spec"]
        (port,) = spec["task"]["ports"]
        published = port["published_port"]
        assert port["publish_mode"] == "ingress" and 30000 <= published <= 32767
        assert f"*:{published}->80/tcp" in ok(lc, "service", "ls")
        wait(lambda: running(lc, "auto", 3), "three replicas on two hosts")
        for address in hosts:
            wait(
                lambda a=address: len({answer(a, published) for _ in range(30)}) == 3,
                f"all three tasks behind {address}:{published}",
                explain=lambda a=address: str({answer(a, published) for _ in range(30)}),
            )
    finally:
        lc.cli("service", "rm", "auto")
