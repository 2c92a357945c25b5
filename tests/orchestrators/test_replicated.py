"""The replicated orchestrator's decisions, on tasks in memory."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.v1.types_pb2 import NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import RestartPolicy, UpdateConfig, UpdateStatus

from .helpers import NOW, applied, ended, node, running, service

NODES = {n.id: n for n in (node("a"), node("b"), node("c"))}


def reconcile(svc, tasks, nodes=NODES, now=NOW, progress=None):
    return reconcile_replicated(svc, tasks, nodes, now, 10.0, progress or UpdateProgress())


def test_creates_one_task_per_missing_slot() -> None:
    plan = reconcile(service(3), [])
    assert sorted(t.slot for t in plan.creates) == [1, 2, 3]
    assert all(t.status.state == TaskState.PENDING and not t.node_id for t in plan.creates)


def test_scale_down_shuts_down_the_highest_slots() -> None:
    svc = service(2)
    tasks = [running(svc, slot, "a") for slot in (1, 2, 3, 4)]
    plan = reconcile(svc, tasks)
    assert sorted(t.slot for t in plan.updates) == [3, 4]
    assert all(t.desired_state == TaskState.SHUTDOWN for t in plan.updates)
    assert not plan.creates


def test_a_failed_task_is_replaced_after_the_restart_delay() -> None:
    svc = service(1, task__restart_policy__delay_seconds=5.0)
    failed = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=3, at=NOW - 2)
    plan = reconcile(svc, [failed])
    assert not plan.creates
    assert plan.wake_at == NOW + 3
    later = reconcile(svc, applied([failed], plan), now=NOW + 3.5)
    assert [t.slot for t in later.creates] == [1]
    assert later.creates[0].attempt == 1


def test_restart_condition_none_leaves_the_slot_empty() -> None:
    svc = service(1, task__restart_policy__condition=RestartPolicy.NONE)
    failed = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 100)
    assert not reconcile(svc, [failed]).creates


def test_on_failure_does_not_restart_a_clean_exit() -> None:
    svc = service(1, task__restart_policy__condition=RestartPolicy.ON_FAILURE)
    done = ended(running(svc, 1, "a"), TaskState.COMPLETE, exit_code=0, at=NOW - 100)
    assert not reconcile(svc, [done]).creates


def test_max_attempts_stops_restarting() -> None:
    svc = service(1, task__restart_policy__max_attempts=2, task__restart_policy__delay_seconds=0.0)
    history = []
    for i in range(3):
        task = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 50 + i)
        task.id = f"old{i}"
        task.attempt = i  # each restart carries the slot's count on
        task.desired_state = TaskState.SHUTDOWN
        history.append(task)
    assert not reconcile(svc, history).creates


def test_tasks_on_a_node_down_past_the_grace_are_orphaned_and_replaced() -> None:
    svc = service(2)
    nodes = dict(NODES, b=node("b", NodeStatus.DOWN, down_since=NOW - 11))
    tasks = [running(svc, 1, "a"), running(svc, 2, "b")]
    plan = reconcile(svc, tasks, nodes)
    orphaned = [t for t in plan.updates if t.status.state == TaskState.ORPHANED]
    assert [t.slot for t in orphaned] == [2]
    assert orphaned[0].desired_state == TaskState.SHUTDOWN
    assert [t.slot for t in plan.creates] == [2]


def test_a_node_down_within_the_grace_keeps_its_tasks() -> None:
    svc = service(1)
    nodes = dict(NODES, a=node("a", NodeStatus.DOWN, down_since=NOW - 4))
    plan = reconcile(svc, [running(svc, 1, "a")], nodes)
    assert plan.is_empty()
    assert plan.wake_at == NOW + 6


def test_drain_moves_tasks_off_the_node() -> None:
    svc = service(1)
    nodes = dict(NODES, a=node("a", availability=NodeSpec.DRAIN))
    plan = reconcile(svc, [running(svc, 1, "a")], nodes)
    assert [t.desired_state for t in plan.updates] == [TaskState.SHUTDOWN]
    assert [t.slot for t in plan.creates] == [1]


def test_rolling_update_goes_in_batches_of_parallelism() -> None:
    svc = service(4, update__parallelism=2)
    tasks = [running(svc, slot, "a") for slot in (1, 2, 3, 4)]
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.UPDATING
    svc.update_status.started_at.FromNanoseconds(int((NOW - 1) * 1e9))
    progress = UpdateProgress()
    plan = reconcile(svc, tasks, progress=progress)
    assert sorted(t.slot for t in plan.creates) == [1, 2]
    assert all(t.spec_version == 2 for t in plan.creates)
    assert sorted(t.slot for t in plan.updates) == [1, 2]
    # The new tasks are not running yet: no second batch.
    assert not reconcile(svc, applied(tasks, plan), progress=progress).creates


def test_a_failed_new_task_rolls_the_update_back() -> None:
    svc = service(2, update__failure_action=UpdateConfig.ROLLBACK)
    svc.previous_spec.CopyFrom(svc.spec)
    svc.previous_spec.task.container.image = "busybox:old"
    tasks = [running(svc, 1, "a")]
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.UPDATING
    svc.update_status.started_at.FromNanoseconds(int((NOW - 10) * 1e9))
    new = running(svc, 2, "b")
    new.spec_version = 2
    tasks.append(ended(new, TaskState.FAILED, exit_code=1, at=NOW - 1))
    plan = reconcile(svc, tasks)
    assert plan.service is not None
    assert plan.service.update_status.state == UpdateStatus.ROLLBACK_STARTED
    assert plan.service.spec.task.container.image == "busybox:old"
    assert plan.service.spec_version == 3
    assert "failed" in plan.service.update_status.message
