"""Services and tasks as `docker service ls` and `docker service ps` print them.

Pure functions of the records (and an optional `now`), so tests pin them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dockyard.cli.humanize import human_duration, short_id, truncate
from dockyard.common.timestamps import is_set, to_seconds

__all__ = [
    "SERVICE_HEADERS",
    "TASK_HEADERS",
    "current_state",
    "mode_name",
    "ports_text",
    "replicas_text",
    "service_row",
    "state_name",
    "task_name",
    "task_rows",
    "update_state",
]

SERVICE_HEADERS = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "UPDATE STATE", "PORTS"]
TASK_HEADERS = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "EXIT"]
ERROR_WIDTH = 40
# TaskStatus.Health, as `docker ps` shows it (NO_HEALTHCHECK shows nothing).
_HEALTH = {1: "health: starting", 2: "healthy", 3: "unhealthy"}
_HEALTH_SHOWN = (6, 7)  # STARTING, RUNNING: an ended task's last health is not news
# States after which a task's container has stopped: an exit code means something.
_FINAL = ("COMPLETE", "FAILED", "SHUTDOWN", "REJECTED", "ORPHANED")


def mode_name(spec: Any) -> str:
    mode = spec.WhichOneof("mode") or ""
    return "replicated-job" if mode == "job" else mode


def state_name(state: int) -> str:
    """`TaskStatus.State` 7 -> 'Running'."""
    from dockyard.v1.types_pb2 import TaskStatus

    return TaskStatus.State.Name(state).capitalize() if state else "Unknown"  # type: ignore[arg-type]


def replicas_text(summary: Any) -> str:
    """running/desired; global: running/ready nodes; jobs: succeeded/completions."""
    return f"{summary.running}/{summary.desired}"


def update_state(service: Any) -> str:
    """The UPDATE STATE column: 'updating', 'rollback_completed'; jobs: complete/running."""
    from dockyard.v1.workloads_pb2 import UpdateStatus

    if service.spec.WhichOneof("mode") == "job":
        status = service.job_status
        if not status.complete:
            return "running"
        return "complete" if status.succeeded >= service.spec.job.completions else "failed"
    state = service.update_status.state
    return UpdateStatus.State.Name(state).lower() if state else ""


def ports_text(spec: Any) -> str:
    """The PORTS column, as `docker service ls`: `*:30000->80/tcp` for the routing mesh's
    (every node), `8080->80/tcp` for a host-mode port (the task's node)."""
    out = []
    for port in spec.task.ports:
        published = port.published_port or ""
        where = "*:" if port.publish_mode == "ingress" else ""
        out.append(f"{where}{published}->{port.target_port}/{port.protocol or 'tcp'}")
    return ", ".join(out)


def service_row(summary: Any, no_trunc: bool = False) -> list[str]:
    service = summary.service
    return [
        service.id if no_trunc else short_id(service.id),
        service.spec.name,
        mode_name(service.spec),
        replicas_text(summary),
        service.spec.task.container.image
        if no_trunc
        else service.spec.task.container.image.split("@", 1)[0],
        update_state(service),
        ports_text(service.spec),
    ]


def current_state(status: Any, now: float | None = None) -> str:
    """'Running 2 minutes ago', 'Pending 3 seconds ago'; just the state when unstamped."""
    import time

    name = state_name(status.state)
    live = status.state in _HEALTH_SHOWN
    health = f" ({_HEALTH[status.health]})" if live and status.health in _HEALTH else ""
    if not is_set(status.timestamp):
        return name + health
    ago = max(0.0, (time.time() if now is None else now) - to_seconds(status.timestamp))
    return f"{name} {human_duration(ago)} ago{health}"


def task_name(task: Any) -> str:
    """name.slot, or name.nodeid for a global service's tasks (slot 0)."""
    return f"{task.service_name}.{task.slot if task.slot else task.node_id}"


def _error(task: Any) -> str:
    from dockyard.v1.types_pb2 import TaskStatus

    status = task.status
    if status.error:
        return str(status.error)
    if status.state in (TaskStatus.PENDING, TaskStatus.REJECTED) and status.message:
        return str(status.message)
    return ""


def _exit(task: Any) -> str:
    name = state_name(task.status.state).upper()
    if name in _FINAL and task.status.container_id:
        return str(task.status.exit_code)
    return ""


def task_rows(
    tasks: Sequence[Any],
    node_names: Mapping[str, str],
    *,
    no_trunc: bool = False,
    now: float | None = None,
) -> list[list[str]]:
    """One row per task, newest first within a slot; older ones marked `\\_ ` as docker does."""
    ordered = sorted(
        tasks,
        key=lambda t: (
            t.service_name,
            t.slot,
            t.node_id if not t.slot else "",
            -to_seconds(t.meta.created_at),
        ),
    )
    rows, previous = [], None
    for task in ordered:
        slot = (task.service_id, task.slot, task.node_id if not task.slot else "")
        name = task_name(task)
        if slot == previous:
            name = f" \\_ {name}"
        previous = slot
        image = task.spec.container.image
        if not no_trunc:
            image = image.split("@", 1)[0]
        node = node_names.get(task.node_id, short_id(task.node_id)) if task.node_id else ""
        error = _error(task)
        if error and not no_trunc:
            error = f'"{truncate(error, ERROR_WIDTH)}"'
        rows.append(
            [
                task.id if no_trunc else short_id(task.id),
                name,
                image,
                node,
                state_name(task.desired_state),
                current_state(task.status, now),
                error,
                _exit(task),
            ]
        )
    return rows


def progress_line(
    name: str, mode: str, tasks: Sequence[Any], running: int, desired: int, updating: str = ""
) -> str:
    """'web: 3/5 running (2 preparing)' and, for a pending task, why it waits."""
    from collections import Counter

    from dockyard.v1.types_pb2 import TaskStatus

    verb = "succeeded" if mode == "job" else "running"
    counts = Counter(
        state_name(t.status.state).lower()
        for t in tasks
        if t.status.state != TaskStatus.RUNNING and t.desired_state <= TaskStatus.RUNNING
    )
    line = f"{name}: {running}/{desired} {verb}"
    if updating:
        line += f", {updating}"
    if counts:
        line += " (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
    reasons = sorted(
        {_error(t) for t in tasks if _error(t) and t.desired_state <= TaskStatus.RUNNING}
    )
    if reasons:
        line += f": {reasons[0]}"
    return line
