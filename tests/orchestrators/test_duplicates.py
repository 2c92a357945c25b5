"""Duplicates: whatever double creates happened, one live task per slot (global:
per node) survives, the same one on every leader."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.global_mode import reconcile_global
from dockyard.controller.orchestrators.jobs import reconcile_job
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.controller.server import _eligible
from dockyard.v1.workloads_pb2 import Task, UpdateConfig, UpdateStatus

from .helpers import NOW, applied, ended, is_live, node, running, service
from .test_global_and_jobs import job, make_global

NODES = {n.id: n for n in (node("a"), node("b"), node("c"))}


def reconcile(svc, tasks, progress=None):
    return reconcile_replicated(svc, tasks, NODES, NOW, 10.0, progress or UpdateProgress())


def shut(plan) -> list[str]:
    return sorted(t.id for t in plan.updates if t.desired_state == TaskState.SHUTDOWN)


def created(task: Task, at: float) -> Task:
    task.meta.created_at.FromNanoseconds(int(at * 1e9))
    return task


def test_two_live_tasks_in_one_slot_leave_one() -> None:
    svc = service(2)
    older = created(running(svc, 1, "a"), NOW - 50)
    newer = created(running(svc, 1, "b"), NOW - 40)
    plan = reconcile(svc, [newer, older, running(svc, 2, "c")])
    assert shut(plan) == [newer.id]
    assert not plan.creates


def test_raising_replicas_with_a_duplicate_adds_only_the_missing_slot() -> None:
    svc = service(3)
    tasks = [running(svc, 1, "a"), running(svc, 1, "b"), running(svc, 2, "c")]
    plan = reconcile(svc, tasks)
    assert [t.slot for t in plan.creates] == [3]
    assert len(shut(plan)) == 1


def test_the_survivor_is_running_and_current_before_older() -> None:
    svc = service(1)
    svc.spec_version = 2
    outdated = created(running(svc, 1, "a"), NOW - 90)
    outdated.spec_version = 1
    pending = created(running(svc, 1, "b"), NOW - 80)
    pending.status.state = TaskState.PENDING
    current = created(running(svc, 1, "c"), NOW - 10)
    tasks = [outdated, pending, current]
    for order in (tasks, tasks[::-1], [pending, current, outdated]):
        assert shut(reconcile(svc, order)) == sorted([outdated.id, pending.id])


def test_a_start_first_update_keeps_its_old_and_new_task_in_a_slot() -> None:
    svc = service(1, update__order=UpdateConfig.START_FIRST)
    old = running(svc, 1, "a")
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.UPDATING
    new = running(svc, 1, "b")
    new.status.state = TaskState.STARTING
    twin = created(running(svc, 1, "c"), NOW - 5)
    twin.status.state = TaskState.STARTING
    new = created(new, NOW - 6)
    plan = reconcile(svc, [old, new, twin])
    assert shut(plan) == [twin.id]


def test_a_global_service_keeps_one_task_per_node() -> None:
    svc = make_global()
    tasks = [running(svc, 0, "a"), running(svc, 0, "a"), running(svc, 0, "b")]
    tasks[1].id = "zz-later"
    plan = reconcile_global(svc, tasks, NODES, NOW, 10.0, UpdateProgress(), _eligible)
    assert shut(plan) == ["zz-later"]
    assert [t.node_id for t in plan.creates] == ["c"]


def test_a_job_never_runs_more_than_parallelism_nor_a_finished_slot_again() -> None:
    svc = job(4, 2)
    done = ended(running(svc, 1, "a"), TaskState.COMPLETE)
    again = running(svc, 1, "b")  # a second copy of a slot that already succeeded
    twins = [running(svc, 2, "a"), running(svc, 2, "b")]
    extra = running(svc, 3, "c")
    tasks = [done, again, *twins, extra]
    plan = reconcile_job(svc, tasks, NODES, NOW, 10.0)
    after = applied(tasks, plan)
    live = [t for t in after if is_live(t)]
    assert len(live) <= 2
    assert len({t.slot for t in live}) == len(live)
    assert 1 not in {t.slot for t in live}
    assert not plan.creates


def test_a_paused_start_first_update_keeps_the_old_task_beside_the_new() -> None:
    svc = service(1, update__order=UpdateConfig.START_FIRST)
    old = running(svc, 1, "a")
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.PAUSED
    new = running(svc, 1, "b")
    new.status.state = TaskState.STARTING
    assert shut(reconcile(svc, [old, new])) == []
