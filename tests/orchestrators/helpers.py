"""Builders for orchestrator unit tests: nodes, services and tasks in memory."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.tasks import is_terminal, new_task, set_status
from dockyard.controller.services import apply_defaults
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import Service, ServiceSpec, Task

NOW = 1_000_000.0


def is_live(task: Task) -> bool:
    """Meant to run, and not finished (the tests' count of what runs)."""
    return task.desired_state <= TaskState.RUNNING and not is_terminal(task)


def node(
    node_id: str,
    state: int = NodeStatus.READY,
    availability: int = NodeSpec.ACTIVE,
    down_since: float = 0.0,
    **labels: str,
) -> Node:
    result = Node(id=node_id)
    result.spec.name = node_id
    result.spec.availability = availability  # type: ignore[assignment]
    result.spec.labels.update(labels)
    result.status.state = state  # type: ignore[assignment]
    result.status.state_changed_at.FromNanoseconds(int(down_since * 1e9))
    return result


def service(replicas: int = 3, **fields: object) -> Service:
    spec = ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.replicated.replicas = replicas
    for key, value in fields.items():
        target, _, attr = key.rpartition("__")
        obj = spec
        for part in target.split("__") if target else []:
            obj = getattr(obj, part)
        setattr(obj, attr, value)
    result = Service(id="svc", spec=apply_defaults(spec), spec_version=1)
    result.meta.version = 1
    return result


def running(svc: Service, slot: int, node_id: str, at: float = NOW - 100) -> Task:
    task = new_task(svc, slot, node_id)
    task.id = f"t{slot}-{node_id}-{task.id[:4]}"
    task.node_id = node_id
    set_status(task, TaskState.RUNNING, "started")
    task.status.timestamp.FromNanoseconds(int(at * 1e9))
    task.observed_at.FromNanoseconds(int(at * 1e9))
    task.meta.version = 5
    return task


def ended(
    task: Task, state: int, exit_code: int = 0, at: float = NOW - 1, agent_skew: float = 0.0
) -> Task:
    """`task` ended, seen by the controller at `at`; the agent's own timestamp
    is `agent_skew` seconds off."""
    copy = Task()
    copy.CopyFrom(task)
    copy.status.state = state  # type: ignore[assignment]
    copy.status.exit_code = exit_code
    copy.status.timestamp.FromNanoseconds(int((at + agent_skew) * 1e9))
    copy.observed_at.FromNanoseconds(int(at * 1e9))
    return copy


def applied(tasks: list[Task], plan: Plan) -> list[Task]:
    """The task list after a plan: updates replace, creates add, deletes go."""
    changed = {t.id: t for t in plan.updates}
    deleted = {task_id for task_id, _ in plan.deletes}
    return [changed.get(t.id, t) for t in tasks if t.id not in deleted] + list(plan.creates)


def live_slots(tasks: list[Task]) -> list[int]:
    return sorted(t.slot for t in tasks if t.desired_state <= TaskState.RUNNING)
