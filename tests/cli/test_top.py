"""`dockyard top`: the model it keeps from the controller's lists and events, and the
view against a real TLS controller with hollow agents (one screen with --once, and the
live follower taking a scale and a pending task from the event stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from dockyard.cli.client import Target, TLSFiles
from dockyard.cli.commands.controller_http import ControllerHttp
from dockyard.cli.commands.top import _Follower, render
from dockyard.cli.commands.top_model import ClusterModel, NodeRow, PendingRow, ServiceRow
from tests.conftest import Cluster


def node(node_id: str, name: str, state: str = "READY", version: int = 1) -> dict[str, Any]:
    return {
        "id": node_id,
        "meta": {"version": str(version)},
        "spec": {"name": name, "availability": "ACTIVE"},
        "status": {"state": state},
        "description": {"resources": {"nano_cpus": "4000000000", "memory_bytes": str(8 * 2**30)}},
    }


def task(
    task_id: str,
    state: str,
    node_id: str = "",
    slot: int = 1,
    message: str = "",
    version: int = 1,
    cpus: float = 0.5,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "meta": {"version": str(version)},
        "service_id": "s1",
        "service_name": "web",
        "slot": slot,
        "node_id": node_id,
        "desired_state": "RUNNING",
        "status": {"state": state, "message": message},
        "spec": {
            "resources": {
                "reservations": {"nano_cpus": str(int(cpus * 1e9)), "memory_bytes": str(2**30)}
            }
        },
    }


SERVICE = {
    "id": "s1",
    "meta": {"version": "1"},
    "spec": {
        "name": "web",
        "replicated": {"replicas": "3"},
        "task": {"container": {"image": "busybox"}},
    },
    "update_status": {"state": "PAUSED", "message": "task failed: exit 1"},
}


def model() -> ClusterModel:
    made = ClusterModel()
    made.load(
        [node("a", "n1"), node("b", "n2", "DOWN")],
        [{"service": SERVICE}],
        [
            task("t1", "RUNNING", "a"),
            task("t2", "RUNNING", "a", 2),
            task("t3", "PENDING", slot=3, message="no suitable node: 2 nodes fail zone"),
        ],
    )
    return made


def test_rows_count_reservations_replicas_and_reasons() -> None:
    made = model()
    assert made.node_rows() == [  # down nodes first
        NodeRow("n2", "DOWN", "ACTIVE", 0, 0.0, 4.0, 0, 8 * 2**30),
        NodeRow("n1", "READY", "ACTIVE", 2, 1.0, 4.0, 2 * 2**30, 8 * 2**30),
    ]
    assert made.service_rows() == [
        ServiceRow("web", "replicated", 2, 3, "busybox", "PAUSED: task failed: exit 1")
    ]
    assert made.pending_rows() == [
        PendingRow("web.3", "PENDING", "no suitable node: 2 nodes fail zone")
    ]


def test_events_apply_unless_older_than_what_is_held() -> None:
    made = model()
    assert made.apply(
        {
            "kind": "task",
            "type": "updated",
            "id": "t3",
            "revision": 5,
            "record": task("t3", "RUNNING", "a", 3, version=5),
        }
    )
    assert made.pending_rows() == []
    assert made.service_rows()[0].running == 3
    stale = {
        "kind": "task",
        "type": "updated",
        "id": "t3",
        "revision": 4,
        "record": task("t3", "PENDING", slot=3, version=4),
    }
    assert not made.apply(stale) and made.pending_rows() == []
    assert made.apply({"kind": "node", "type": "removed", "id": "b", "revision": 6})
    assert [n.name for n in made.node_rows()] == ["n1"]
    assert not made.apply({"kind": "secret", "type": "created", "id": "x", "revision": 7})
    assert made.events == 2


def screen(made: ClusterModel) -> str:
    console = Console(record=True, width=160)
    console.print(render(made, 40))
    return console.export_text()


def test_render_shows_the_three_tables() -> None:
    text = screen(model())
    assert "Nodes (2)" in text and "Services (1)" in text and "Pending tasks (1)" in text
    assert "no suitable node: 2 nodes fail zone" in text and "2/3" in text


# -- against a controller ------------------------------------------------------------------


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    made = cluster_factory()
    made.start_controller()
    made.start_hollow_nodes(("n1", "n2"))
    made.cli("service", "create", "--name", "web", "--replicas", "2", "busybox", "sleep", "3600")
    yield made


def test_once_prints_the_cluster(cluster: Cluster) -> None:
    cluster.cli(
        "service",
        "create",
        "--detach",
        "--name",
        "mars",
        "--constraint",
        "node.labels.zone==mars",
        "busybox",
        "sleep",
        "3600",
    )
    out = cluster.cli("top", "--once").stdout
    assert "Nodes (2)" in out and "n1" in out and "n2" in out
    assert "web" in out and "2/2" in out and "mars" in out
    assert "Pending tasks (1)" in out and "zone==mars" in out


def test_the_live_view_follows_the_event_stream(cluster: Cluster) -> None:
    admin = cluster.pki / "admin"
    target = Target(
        cluster.address,
        "-H",
        TLSFiles(str(admin / "ca.pem"), str(admin / "cert.pem"), str(admin / "key.pem")),
    )
    follower = _Follower(ControllerHttp(target), target)
    threading.Thread(target=follower.run, args=(False,), daemon=True).start()
    assert follower.loaded.wait(30), follower.failure

    def rows() -> list[ServiceRow]:
        with follower.lock:
            return follower.model.service_rows()

    cluster.wait_for(lambda: [(r.running, r.desired) for r in rows()] == [(2, 2)], "web 2/2")
    loads = follower.model.events
    cluster.cli("service", "scale", "--detach", "web=4")
    cluster.wait_for(
        lambda: [(r.running, r.desired) for r in rows()] == [(4, 4)], "web 4/4 from the events"
    )
    assert follower.model.events > loads
    cluster.agents["n2"].stop()
    cluster.wait_for(lambda: screen(follower.model).count("DOWN") == 1, "n2 DOWN on screen")
    time.sleep(0)  # (the reader thread is a daemon: it ends with the test process)
