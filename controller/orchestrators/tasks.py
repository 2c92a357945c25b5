"""Small facts about tasks that every orchestrator uses."""

from __future__ import annotations

import secrets

from dockyard.common.reference import pinned_digest
from dockyard.common.timestamps import now_timestamp, to_seconds
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

State = TaskStatus.State

TERMINAL = frozenset({State.COMPLETE, State.SHUTDOWN, State.FAILED, State.REJECTED, State.ORPHANED})


def is_terminal(task: Task) -> bool:
    return task.status.state in TERMINAL


def is_live(task: Task) -> bool:
    """Meant to run, and not finished."""
    return task.desired_state <= State.RUNNING and not is_terminal(task)


def failed(task: Task) -> bool:
    return task.status.state in (State.FAILED, State.REJECTED, State.ORPHANED) or (
        task.status.state == State.COMPLETE and task.status.exit_code != 0
    )


def finished_at(task: Task) -> float:
    return to_seconds(task.status.timestamp)


def new_task(service: Service, slot: int, node_id: str = "", attempt: int = 0) -> Task:
    """A task for one slot (or node, for global services), waiting for the scheduler."""
    task = Task(
        id=secrets.token_hex(12),
        service_id=service.id,
        service_name=service.spec.name,
        slot=slot,
        node_id=node_id,
        spec_version=service.spec_version,
        desired_state=State.RUNNING,
        attempt=attempt,
    )
    task.spec.CopyFrom(service.spec.task)
    task.image_digest = pinned_digest(task.spec.container.image)
    set_status(task, State.PENDING, "waiting for the scheduler")
    return task


def set_status(task: Task, state: State.ValueType, message: str, error: str = "") -> None:
    task.status.state = state
    task.status.message = message
    task.status.error = error
    task.status.timestamp.CopyFrom(now_timestamp())


def shut_down(task: Task) -> Task:
    """A copy of `task` whose desired state is SHUTDOWN (its agent stops it)."""
    copy = Task()
    copy.CopyFrom(task)
    copy.desired_state = State.SHUTDOWN
    if copy.status.state in (State.NEW, State.PENDING):
        set_status(copy, State.SHUTDOWN, "shut down before it was assigned")
    return copy
