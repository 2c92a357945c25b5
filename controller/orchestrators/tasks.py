"""Small facts about tasks that every orchestrator uses."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dockyard.common.reference import pinned_digest
from dockyard.common.states import TaskState
from dockyard.common.timestamps import now_timestamp, to_seconds
from dockyard.controller.orchestrators.plan import Plan
from dockyard.v1.workloads_pb2 import Service, Task

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

TERMINAL = frozenset(
    {
        TaskState.COMPLETE,
        TaskState.SHUTDOWN,
        TaskState.FAILED,
        TaskState.REJECTED,
        TaskState.ORPHANED,
    }
)


def is_terminal(task: Task) -> bool:
    return task.status.state in TERMINAL


def failed(task: Task) -> bool:
    return task.status.state in (TaskState.FAILED, TaskState.REJECTED, TaskState.ORPHANED) or (
        task.status.state == TaskState.COMPLETE and task.status.exit_code != 0
    )


def observed_at(task: Task) -> float:
    """When a controller first saw the task's current state, on the controller's
    clock (0.0: never stamped). Planners compare only this with their `now`:
    `status.timestamp` comes from the agent's clock, which may be hours off."""
    return to_seconds(task.observed_at)


def stamp_unobserved(tasks: Sequence[Task], now: float, plan: Plan) -> list[Task]:
    """Stamp tasks that no controller stamped yet (records from before stamps
    existed) with `now`, the earliest this leader can vouch for; return the list
    with the stamped copies in place, so that later changes keep the stamp."""
    result = []
    for task in tasks:
        if task.HasField("observed_at"):
            result.append(task)
            continue
        stamped = Task()
        stamped.CopyFrom(task)
        stamped.observed_at.FromNanoseconds(int(now * 1e9))
        plan.update(stamped)
        result.append(stamped)
    return result


def creation_order(task: Task) -> tuple[int, int, str]:
    """Sort key: the order the controller made the tasks (the store stamps
    `created_at` on the controller's clock; the id breaks ties the same way
    on every leader)."""
    created = task.meta.created_at
    return (created.seconds, created.nanos, task.id)


def new_task(service: Service, slot: int, node_id: str = "", attempt: int = 0) -> Task:
    """A task for one slot (or node, for global services), waiting for the scheduler."""
    task = Task(
        id=secrets.token_hex(12),
        service_id=service.id,
        service_name=service.spec.name,
        slot=slot,
        node_id=node_id,
        spec_version=service.spec_version,
        desired_state=TaskState.RUNNING,
        attempt=attempt,
    )
    task.spec.CopyFrom(service.spec.task)
    task.image_digest = pinned_digest(task.spec.container.image)
    set_status(task, TaskState.PENDING, "waiting for the scheduler")
    return task


def set_status(
    task: Task,
    state: TaskState.ValueType,
    message: str,
    error: str = "",
    now: Timestamp | None = None,
) -> None:
    """Move the task's status to `state`, stamped `now` (else the clock's)."""
    task.status.state = state
    task.status.message = message
    task.status.error = error
    task.status.timestamp.CopyFrom(now if now is not None else now_timestamp())
    task.observed_at.CopyFrom(task.status.timestamp)


def shut_down(task: Task) -> Task:
    """A copy of `task` whose desired state is SHUTDOWN (its agent stops it)."""
    copy = Task()
    copy.CopyFrom(task)
    copy.desired_state = TaskState.SHUTDOWN
    if copy.status.state in (TaskState.NEW, TaskState.PENDING):
        set_status(copy, TaskState.SHUTDOWN, "shut down before it was assigned")
    return copy
