"""The cluster view's running counts (what `service ls` and `info` read instead of a
scan of every task) and what marks a service for the orchestrator."""

from __future__ import annotations

from typing import Any

from dockyard.controller.state import ClusterState
from dockyard.controller.store import SERVICES, TASKS
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task, UpdateStatus


def view() -> ClusterState:
    return ClusterState(store=None)  # type: ignore[arg-type]  # nothing here reads etcd


def task(task_id: str, state: int, service_id: str = "s1", node_id: str = "") -> Task:
    record = Task(id=task_id, service_id=service_id, node_id=node_id)
    record.desired_state = TaskStatus.RUNNING
    record.status.state = state  # type: ignore[assignment]
    record.observed_at.FromSeconds(1)
    return record


def put(state: ClusterState, record: Any) -> None:
    kind, table = (TASKS, state.tasks) if isinstance(record, Task) else (SERVICES, state.services)
    state._put(kind, table, record.id, record)


def test_counts_follow_every_change_of_a_task() -> None:
    state = view()
    put(state, Service(id="s1"))
    put(state, task("t1", TaskStatus.PENDING))
    put(state, task("t2", TaskStatus.PENDING))
    assert (state.task_counts["wanted"], state.task_counts["pending"]) == (2, 2)
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert state.task_counts["running"] == 1 and state.running_by_service["s1"] == 1
    ended = task("t1", TaskStatus.COMPLETE, node_id="n1")
    ended.desired_state = TaskStatus.SHUTDOWN
    put(state, ended)
    assert state.task_counts["running"] == 0 and state.running_by_service["s1"] == 0
    assert state.succeeded_by_service["s1"] == 1
    state._remove(TASKS, state.tasks, "t1")
    state._remove(TASKS, state.tasks, "t2")
    assert state.succeeded_by_service["s1"] == 0
    assert +state.task_counts == {}  # every count back to zero


def test_a_live_status_step_does_not_wake_the_orchestrator() -> None:
    state = view()
    put(state, Service(id="s1"))
    put(state, task("t1", TaskStatus.PENDING))
    orchestrator, others = state.track(status_changes=False), state.track()
    put(state, task("t1", TaskStatus.ASSIGNED, node_id="n1"))  # placed
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert orchestrator.take().services == set()
    assert others.take().services == {"s1"}
    put(state, task("t1", TaskStatus.FAILED, node_id="n1"))  # ended: the orchestrator acts
    assert orchestrator.take().services == {"s1"}
    moved = task("t1", TaskStatus.FAILED, node_id="n2")
    put(state, moved)
    assert orchestrator.take().services == {"s1"}


def test_a_service_being_updated_sees_every_step() -> None:
    state = view()
    updating = Service(id="s1")
    updating.update_status.state = UpdateStatus.UPDATING
    put(state, updating)
    put(state, task("t1", TaskStatus.STARTING, node_id="n1"))
    orchestrator = state.track(status_changes=False)
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert orchestrator.take().services == {"s1"}
