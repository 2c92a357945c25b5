"""Stats across a real TLS cluster of runc agents: the controller's `/v1/nodes/ID/stats`,
`/v1/services/NAME/stats` and `/v1/stats` (asked of the agents on demand, a timeout per
node), `dockyard stats`, and each agent's `/metrics` over mutual TLS by role."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.v1.control_pb2 import CreateServiceRequest, ListTasksRequest
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec
from tests.agent.conftest import ImageRegistry
from tests.conftest import Cluster
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.registry]
NAMES = ("s1", "s2")
MiB = 2**20


@pytest.fixture
def stats_cluster(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry
) -> Iterator[tuple[Cluster, dict[str, int]]]:
    cluster = cluster_factory(resolve_image="always")
    metrics_ports = {name: free_port() for name in NAMES}
    try:
        cluster.start_controller(["--node-down-grace", "30"])
        for name in NAMES:
            cluster.start_agent(
                name,
                runtime="runc",
                extra=[
                    "--cgroup-parent",
                    f"dockyard-test-{cluster.root.name}-{name}",
                    "--metrics-listen",
                    f"127.0.0.1:{metrics_ports[name]}",
                ],
            )
        cluster.wait_for(
            lambda: (
                len(cluster.nodes()) == 2
                and all(n["status"]["state"] == "READY" for n in cluster.nodes().values())
            ),
            "2 nodes READY",
        )
        yield cluster, metrics_ports
    finally:
        for daemon in cluster.agents.values():  # a stopped agent must not stay stopped
            if daemon.process is not None and daemon.process.poll() is None:
                os.kill(daemon.process.pid, signal.SIGCONT)
        cluster.stop()
        for name in NAMES:
            cleanup_everything(
                cluster.root / f"agent-{name}" / "runtime",
                f"dockyard-test-{cluster.root.name}-{name}",
            )


def tls(identity: Path | None, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(str(identity / "cert.pem"), str(identity / "key.pem"))
    return context


def get(url: str, context: ssl.SSLContext, timeout: float = 30) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def create(
    cluster: Cluster, name: str, image: str, replicas: int, script: str, memory: int = 0
) -> None:
    spec = ServiceSpec(name=name)
    spec.task.container.image = image
    spec.task.container.command.extend(["sh", "-c", script])
    spec.task.container.stop_grace_seconds = 1
    if memory:
        spec.task.resources.limits.memory_bytes = memory
    spec.replicated.replicas = replicas
    cluster.control().CreateService(CreateServiceRequest(spec=spec))


def running(cluster: Cluster, service: str) -> list[Any]:
    tasks = cluster.control().ListTasks(ListTasksRequest(services=[service])).tasks
    return [t for t in tasks if t.status.state == TaskStatus.RUNNING]


def test_stats_by_node_service_and_cluster(
    stats_cluster: tuple[Cluster, dict[str, int]], image_registry: ImageRegistry
) -> None:
    cluster, _ = stats_cluster
    admin = tls(cluster.pki / "admin", cluster.pki / "admin" / "ca.pem")
    base = f"https://127.0.0.1:{cluster.http_port}"
    create(cluster, "web", image_registry.busybox, 3, "sleep 3600")
    # 24 MiB held by each hog's shell (the echo keeps sh from exec'ing into the sleep)
    create(
        cluster,
        "hog",
        image_registry.busybox,
        1,
        "x=$(head -c 24m /dev/zero | tr '\\0' a); sleep 3600; echo $x | head -c 1",
    )
    cluster.wait_for(
        lambda: len(running(cluster, "web")) == 3 and len(running(cluster, "hog")) == 1,
        "web 3/3 and hog 1/1 running",
        90,
    )

    status, body = get(f"{base}/v1/services/web/stats", admin)
    assert status == 200, body
    web = json.loads(body)
    tasks = {t.status.container_id: t for t in running(cluster, "web")}
    assert {c["id"] for c in web["containers"]} == set(tasks)
    assert web["totals"]["containers"] == 3 and web["service"] == "web"
    for c in web["containers"]:
        assert c["service"] == "web" and c["task_id"] == tasks[c["id"]].id
        assert c["memory_usage"] > 0 and c["pids"] >= 1 and c["cpu_usage_ns"] > 0
    assert all(n["error"] == "" for n in web["nodes"])

    def hog_memory() -> int:
        answer = json.loads(get(f"{base}/v1/services/hog/stats", admin)[1])
        return int(answer["totals"]["memory_usage"])

    cluster.wait_for(lambda: hog_memory() >= 24 * MiB, "the hog's 24 MiB to show", 30)

    node_ids = {name: node["id"] for name, node in cluster.nodes().items()}
    status, body = get(f"{base}/v1/nodes/s1/stats", admin)
    assert status == 200, body
    s1 = json.loads(body)
    assert s1["node_id"] == node_ids["s1"] and s1["error"] == ""
    assert {c["id"] for c in s1["containers"]} == {
        t.status.container_id
        for t in [*running(cluster, "web"), *running(cluster, "hog")]
        if t.node_id == node_ids["s1"]
    }

    viewer = cluster.root / "viewer"  # a read-only identity reads the stats too
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        "viewer",
        "--role",
        "read-only",
        "--state-dir",
        str(cluster.root / "controller"),
        "--out",
        str(viewer),
    )
    status, body = get(f"{base}/v1/stats", tls(viewer, cluster.pki / "admin" / "ca.pem"))
    assert status == 200, body
    whole = json.loads(body)
    by_service = {s["service"]: s["containers"] for s in whole["services"]}
    assert by_service == {"web": 3, "hog": 1}

    table = cluster.cli("stats", "--no-stream").stdout
    assert "web" in table and "3 running" in table and "hog" in table
    answer = json.loads(cluster.cli("stats", "web", "--no-stream", "-o", "json").stdout)
    assert {c["id"] for c in answer["containers"]} == set(tasks)
    missing = cluster.cli("stats", "nope", "--no-stream", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr

    check_a_stopped_node(cluster, base, admin)


def check_a_stopped_node(cluster: Cluster, base: str, admin: ssl.SSLContext) -> None:
    """A stopped agent (SIGSTOP: it neither answers nor closes) costs its timeout only;
    the other node's containers are still there."""
    stopped = cluster.agents["s2"].process
    assert stopped is not None
    os.kill(stopped.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body = get(f"{base}/v1/stats", admin)
        took = time.monotonic() - started
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    assert status == 200
    whole = json.loads(body)
    errors = {n["node"]: n["error"] for n in whole["nodes"]}
    assert errors["s1"] == "" and errors["s2"], errors
    assert {c["node"] for c in whole["containers"]} == {"s1"}
    print(f"\n/v1/stats with one agent stopped answered in {took:.1f} s ({errors['s2']})")


def test_agent_metrics_over_mutual_tls(
    stats_cluster: tuple[Cluster, dict[str, int]], image_registry: ImageRegistry
) -> None:
    cluster, ports = stats_cluster
    ca = cluster.pki / "admin" / "ca.pem"
    create(cluster, "web", image_registry.busybox, 2, "sleep 3600")
    cluster.wait_for(lambda: len(running(cluster, "web")) == 2, "web 2/2 running", 90)
    base = f"https://127.0.0.1:{cluster.http_port}"
    status, body = get(f"{base}/v1/sd/agents?port={ports['s1']}", tls(cluster.pki / "admin", ca))
    assert status == 200, body
    groups = {g["labels"]["__meta_dockyard_node_name"]: g for g in json.loads(body)}
    assert sorted(groups) == ["s1", "s2"]
    assert groups["s1"]["targets"] == [f"127.0.0.1:{ports['s1']}"]  # what is scraped below
    assert groups["s1"]["labels"]["__meta_dockyard_node_state"] == "READY"
    assert get(f"{base}/v1/sd/agents?port=0", tls(cluster.pki / "admin", ca))[0] == 400
    url = f"https://{groups['s1']['targets'][0]}/metrics"
    viewer = cluster.root / "prom"
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        "prom",
        "--role",
        "read-only",
        "--state-dir",
        str(cluster.root / "controller"),
        "--out",
        str(viewer),
    )
    status, body = get(url, tls(viewer, ca))
    assert status == 200, body
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    names = {s.labels.get("service") for s in samples if s.name == "dockyard_container_running"}
    on_s1 = [t for t in running(cluster, "web") if t.node_id == cluster.nodes()["s1"]["id"]]
    assert names == ({"web"} if on_s1 else set())
    node = {s.labels.get("node") for s in samples if s.name == "container_threads"}
    assert node == ({"s1"} if on_s1 else set())
    assert get(url, tls(cluster.pki / "admin", ca))[0] == 200
    node_pki = cluster.root / "agent-s2" / "pki"  # another agent's certificate
    other = ssl.create_default_context(cafile=str(ca))
    other.load_cert_chain(str(node_pki / "node.pem"), str(node_pki / "node-key.pem"))
    status, body = get(url, other)
    assert status == 403 and b"node" in body
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        get(url, tls(None, ca))  # no client certificate: the handshake fails
