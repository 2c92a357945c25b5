"""A new leader carries a rolling update on from what the service record says:
it waits out the delay after the last batch and remembers the failures."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.v1.workloads_pb2 import Service, Task, UpdateStatus

from .helpers import NOW, applied, ended, node, running, service

NODES = {n.id: n for n in (node("a"), node("b"), node("c"))}


def reconcile(svc: Service, tasks: list[Task], now: float = NOW, progress=None):
    return reconcile_replicated(svc, tasks, NODES, now, 10.0, progress or UpdateProgress())


def mid_update(last_batch: float) -> tuple[Service, list[Task]]:
    """Three replicas, delay 30 s between batches of one; slot 1 is done."""
    svc = service(3, update__parallelism=1, update__delay_seconds=30.0)
    tasks = [running(svc, slot, "abc"[slot - 1]) for slot in (1, 2, 3)]
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.UPDATING
    svc.update_status.started_at.FromNanoseconds(int((NOW - 60) * 1e9))
    if last_batch:
        svc.update_status.last_batch_at.FromNanoseconds(int(last_batch * 1e9))
    tasks[0] = running(svc, 1, "a", at=NOW - 8)
    return svc, tasks


def test_a_batch_start_is_written_to_the_service_record() -> None:
    svc, tasks = mid_update(last_batch=NOW - 40)
    plan = reconcile(svc, tasks)
    assert [t.slot for t in plan.creates] == [2]
    assert plan.service is not None
    assert plan.service.update_status.last_batch_at.ToNanoseconds() == int(NOW * 1e9)


def test_a_new_leader_waits_the_rest_of_the_delay_after_the_last_batch() -> None:
    svc, tasks = mid_update(last_batch=NOW - 10)
    plan = reconcile(svc, tasks, progress=UpdateProgress())  # a fresh leader's memory
    assert not plan.creates
    assert plan.wake_at == NOW + 20
    later = reconcile(svc, tasks, now=NOW + 20.5, progress=UpdateProgress())
    assert [t.slot for t in later.creates] == [2]


def test_a_batch_of_an_earlier_update_does_not_delay_this_one() -> None:
    svc, tasks = mid_update(last_batch=NOW - 70)  # before this update started
    svc.update_status.started_at.FromNanoseconds(int((NOW - 5) * 1e9))
    assert [t.slot for t in reconcile(svc, tasks).creates] == [2]


def test_a_new_leader_still_counts_the_failures_of_the_update() -> None:
    svc, tasks = mid_update(last_batch=NOW - 10)
    tasks[0] = ended(tasks[0], TaskState.FAILED, exit_code=1, at=NOW - 5)
    plan = reconcile(svc, tasks, progress=UpdateProgress())
    assert plan.service is not None
    assert plan.service.update_status.state == UpdateStatus.PAUSED
    again = reconcile(svc, applied(tasks, plan), progress=UpdateProgress())
    assert not again.creates
