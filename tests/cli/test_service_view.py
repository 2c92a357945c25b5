"""How services, tasks and progress are shown: states, ages, names, history."""

from __future__ import annotations

import io

from dockyard.cli.commands.service_logs import log_prefix
from dockyard.cli.commands.service_view import (
    current_state,
    ports_text,
    progress_line,
    service_row,
    task_rows,
    update_state,
)
from dockyard.cli.commands.service_wait import ProgressView, Snapshot
from dockyard.cli.render import table
from dockyard.v1.control_pb2 import ServiceSummary
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, ServiceSpec, Task, UpdateStatus

NOW = 1_800_000_000.0


def task(
    slot: int,
    state: int,
    *,
    desired: int = TaskStatus.RUNNING,
    ago: float = 120,
    created_ago: float = 300,
    node: str = "n" * 20,
    tid: str = "",
    **status: object,
) -> Task:
    t = Task(
        id=tid or f"{slot}" * 25,
        service_id="svc",
        service_name="web",
        slot=slot,
        node_id=node,
        desired_state=desired,
    )
    t.spec.container.image = "busybox:1.36@sha256:" + "a" * 64
    t.status.state = state
    t.status.timestamp.FromSeconds(int(NOW - ago))
    t.meta.created_at.FromSeconds(int(NOW - created_ago))
    for key, value in status.items():
        setattr(t.status, key, value)
    return t


def test_current_state_says_state_and_age() -> None:
    assert current_state(task(1, TaskStatus.RUNNING).status, NOW) == "Running 2 minutes ago"
    assert current_state(task(1, TaskStatus.PENDING, ago=3).status, NOW) == "Pending 3 seconds ago"
    assert current_state(task(1, TaskStatus.FAILED, ago=7200).status, NOW) == "Failed 2 hours ago"
    assert current_state(TaskStatus(state=TaskStatus.NEW), NOW) == "New"
    healthy = task(1, TaskStatus.RUNNING).status
    healthy.health = TaskStatus.HEALTHY
    assert current_state(healthy, NOW) == "Running 2 minutes ago (healthy)"
    waiting = TaskStatus(state=TaskStatus.STARTING, health=TaskStatus.HEALTH_STARTING)
    assert current_state(waiting, NOW) == "Starting (health: starting)"
    ended = task(1, TaskStatus.SHUTDOWN).status
    ended.health = TaskStatus.HEALTHY
    assert current_state(ended, NOW) == "Shutdown 2 minutes ago"


def test_task_rows_name_nodes_and_mark_history() -> None:
    old = task(
        1,
        TaskStatus.FAILED,
        desired=TaskStatus.SHUTDOWN,
        created_ago=900,
        ago=600,
        tid="f" * 25,
        error="task: non-zero exit (3)",
        exit_code=3,
        container_id="c1",
    )
    new = task(1, TaskStatus.RUNNING, container_id="c2")
    pending = task(
        2,
        TaskStatus.PENDING,
        node="",
        ago=5,
        message="no suitable node (insufficient memory on 3 nodes)",
    )
    rows = task_rows([old, pending, new], {"n" * 20: "node-1"}, now=NOW)
    assert rows[0] == [
        "111111111111",
        "web.1",
        "busybox:1.36",
        "node-1",
        "Running",
        "Running 2 minutes ago",
        "",
        "",
    ]
    assert rows[1] == [
        "ffffffffffff",
        " \\_ web.1",
        "busybox:1.36",
        "node-1",
        "Shutdown",
        "Failed 10 minutes ago",
        '"task: non-zero exit (3)"',
        "3",
    ]
    assert rows[2][1:4] == ["web.2", "busybox:1.36", ""]
    assert rows[2][5] == "Pending 5 seconds ago"
    assert rows[2][6].startswith('"no suitable node (insufficient') and rows[2][6].endswith('…"')
    full = task_rows([pending], {}, no_trunc=True, now=NOW)[0]
    assert full[0] == "2" * 25 and full[2].endswith("a" * 64)
    assert full[6] == "no suitable node (insufficient memory on 3 nodes)"


def test_global_tasks_are_named_by_node() -> None:
    t = task(0, TaskStatus.RUNNING, node="abc123")
    assert task_rows([t], {"abc123": "n1"}, now=NOW)[0][1] == "web.abc123"
    assert log_prefix(t, "n1") == f"web.abc123.{'0' * 12}@n1 | "
    assert log_prefix(task(3, TaskStatus.RUNNING), "n2") == f"web.3.{'3' * 12}@n2 | "


def test_service_rows_by_mode() -> None:
    web = Service(id="a" * 24, spec=ServiceSpec(name="web"))
    web.spec.replicated.replicas = 5
    web.spec.task.container.image = "nginx:1.25"
    web.update_status.state = UpdateStatus.UPDATING
    assert service_row(ServiceSummary(service=web, running=3, desired=5)) == [
        "a" * 12,
        "web",
        "replicated",
        "3/5",
        "nginx:1.25",
        "updating",
        "",
    ]
    web.spec.task.ports.add(published_port=30000, target_port=80, publish_mode="ingress")
    web.spec.task.ports.add(
        published_port=8080, target_port=81, protocol="udp", publish_mode="host"
    )
    assert ports_text(web.spec) == "*:30000->80/tcp, 8080->81/udp"
    agent = Service(id="b" * 24, spec=ServiceSpec(name="agent"))
    agent.spec.__getattribute__("global").SetInParent()
    row = service_row(ServiceSummary(service=agent, running=2, desired=3))
    assert row[2:4] == ["global", "2/3"] and row[5] == ""
    batch = Service(id="c" * 24, spec=ServiceSpec(name="batch"))
    batch.spec.job.completions = 4
    assert update_state(batch) == "running"
    batch.job_status.complete, batch.job_status.succeeded = True, 4
    row = service_row(ServiceSummary(service=batch, running=4, desired=4))
    assert row[2:4] == ["replicated-job", "4/4"] and row[5] == "complete"
    batch.job_status.succeeded = 2
    assert update_state(batch) == "failed"
    assert table(["ID", "NAME"], [["x", "web"]]).splitlines()[0] == "ID   NAME"


def test_progress_line_counts_states_and_says_why() -> None:
    tasks = [
        task(1, TaskStatus.RUNNING),
        task(2, TaskStatus.PREPARING),
        task(3, TaskStatus.PENDING, message="no suitable node (port 80 in use on 2 nodes)"),
    ]
    assert progress_line("web", "replicated", tasks, 1, 3) == (
        "web: 1/3 running (1 pending, 1 preparing): no suitable node (port 80 in use on 2 nodes)"
    )
    assert (
        progress_line("web", "replicated", tasks[:1], 1, 1, "1/1 updated")
        == "web: 1/1 running, 1/1 updated"
    )
    assert progress_line("job", "job", [], 2, 5) == "job: 2/5 succeeded"


def snapshot(service: Service, tasks: list[Task], running: int, desired: int) -> Snapshot:
    snap = Snapshot.__new__(Snapshot)
    snap.service, snap.tasks = service, tasks
    snap.summary = ServiceSummary(service=service, running=running, desired=desired)
    return snap


def test_convergence_waits_for_the_update_and_for_extra_tasks_to_go() -> None:
    web = Service(id="a" * 24, spec=ServiceSpec(name="web"), spec_version=2)
    web.spec.replicated.replicas = 2
    up = [task(1, TaskStatus.RUNNING), task(2, TaskStatus.RUNNING)]
    assert snapshot(web, up, 2, 2).converged()
    assert not snapshot(web, [*up, task(3, TaskStatus.RUNNING)], 3, 2).converged()
    assert not snapshot(web, [up[0], task(2, TaskStatus.STARTING)], 1, 2).converged()
    web.update_status.state = UpdateStatus.UPDATING
    assert not snapshot(web, up, 2, 2).converged()
    web.update_status.state = UpdateStatus.PAUSED
    web.update_status.message = "update paused: 1 of 2 tasks failed"
    assert snapshot(web, up, 2, 2).paused() == "web: update paused: 1 of 2 tasks failed"
    web.update_status.message = "2 tasks failed"
    assert snapshot(web, up, 2, 2).paused() == "web: update paused: 2 tasks failed"


def test_progress_view_prints_a_line_per_change() -> None:
    out = io.StringIO()
    with ProgressView(out, bars=False) as view:
        for line in ["web: 0/2 running", "web: 0/2 running", "web: 2/2 running"]:
            view.show(line, 0, 2)
    assert out.getvalue() == "web: 0/2 running\nweb: 2/2 running\n"
