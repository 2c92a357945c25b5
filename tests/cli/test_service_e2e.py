"""`dockyard service` against a real controller and hollow agents."""

from __future__ import annotations

import json
from collections.abc import Callable

from dockyard.v1.control_pb2 import ListTasksRequest
from tests.conftest import Cluster


# The controller does not store the agents' task status reports yet (tasks stay
# ASSIGNED while the hollow agents report RUNNING); drop this once it does.
def test_create_scale_rm_with_hollow_agents(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_hollow_nodes(("n1", "n2"))

    created = cluster.cli(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--timeout",
        "30s",
        "busybox:latest",
        "sleep",
        "1000",
        timeout=90,
    )
    service_id = created.stdout.strip()
    assert len(service_id) >= 12 and "web: 3/3 running" in created.stderr, created.stderr
    table = cluster.cli("service", "ls").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "NAME", "MODE", "REPLICAS"]
    assert any(line.split()[1:4] == ["web", "replicated", "3/3"] for line in table[1:]), table
    tasks = json.loads(cluster.cli("service", "ps", "web", "-o", "json").stdout)
    assert sorted(t["slot"] for t in tasks) == [1, 2, 3]
    assert {t["status"]["state"] for t in tasks} == {"RUNNING"}
    ps = cluster.cli("ps").stdout
    assert "web.1" in ps and "Running" in ps

    scaled = cluster.cli("service", "scale", "web=1", "--timeout", "30s", timeout=90)
    assert scaled.stdout.strip() == service_id and "web: 1/1 running" in scaled.stderr
    running = json.loads(
        cluster.cli("service", "ps", "web", "-f", "desired-state=running", "-o", "json").stdout
    )
    assert len(running) == 1

    full_id = json.loads(cluster.cli("service", "inspect", "web").stdout)[0]["id"]
    assert cluster.cli("service", "rm", "web").stdout.strip() == "web"
    assert cluster.cli("service", "ls", "-q").stdout.strip() == ""
    # ... and its task really goes: stopped by its agent, then reaped.
    control = cluster.control()
    try:
        cluster.wait_for(
            lambda: (
                not [
                    t
                    for t in control.ListTasks(ListTasksRequest(include_history=True)).tasks
                    if t.service_id == full_id
                ]
            ),
            "the removed service's task gone",
        )
    finally:
        control.close()
