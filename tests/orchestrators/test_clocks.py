"""Agents' clocks are not the controller's: a node an hour ahead or behind
changes no restart delay, restart window, update monitor or failure count."""

from __future__ import annotations

import pytest

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.v1.workloads_pb2 import RestartPolicy, Service, Task, UpdateStatus

from .helpers import NOW, applied, ended, node, running, service

NODES = {n.id: n for n in (node("a"), node("b"), node("c"))}
HOUR = 3600.0
SKEWS = pytest.mark.parametrize("skew", [HOUR, -HOUR], ids=["agent-ahead", "agent-behind"])


def reconcile(svc: Service, tasks: list[Task], now: float = NOW):
    return reconcile_replicated(svc, tasks, NODES, now, 10.0, UpdateProgress())


@SKEWS
def test_a_restart_delay_is_measured_on_the_controllers_clock(skew: float) -> None:
    svc = service(1, task__restart_policy__delay_seconds=5.0)
    failed = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 2, agent_skew=skew)
    plan = reconcile(svc, [failed])
    assert not plan.creates
    assert plan.wake_at == NOW + 3
    later = reconcile(svc, applied([failed], plan), now=NOW + 3.5)
    assert [t.slot for t in later.creates] == [1]


@SKEWS
def test_a_restart_window_counts_what_the_controller_saw_in_it(skew: float) -> None:
    svc = service(
        1,
        task__restart_policy__condition=RestartPolicy.ANY,
        task__restart_policy__max_attempts=1,
        task__restart_policy__window_seconds=60.0,
        task__restart_policy__delay_seconds=0.0,
    )
    old = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 600, agent_skew=skew)
    old.id, old.desired_state = "old", TaskState.SHUTDOWN
    old.meta.created_at.FromSeconds(int(NOW - 700))
    new = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 1, agent_skew=skew)
    new.id, new.attempt = "new", 1
    new.meta.created_at.FromSeconds(int(NOW - 500))
    # One failure in the last minute: one restart is still allowed.
    assert [t.slot for t in reconcile(svc, [old, new]).creates] == [1]


def test_history_order_is_the_order_the_controller_made_the_tasks() -> None:
    svc = service(1, task__restart_policy__condition=RestartPolicy.ON_FAILURE)
    first = ended(running(svc, 1, "b"), TaskState.FAILED, exit_code=1, at=NOW - 60, agent_skew=HOUR)
    first.id, first.desired_state = "first", TaskState.SHUTDOWN
    first.meta.created_at.FromSeconds(int(NOW - 100))
    second = ended(running(svc, 1, "a"), TaskState.COMPLETE, exit_code=0, at=NOW - 5)
    second.id = "second"
    second.meta.created_at.FromSeconds(int(NOW - 50))
    # The newest task completed cleanly: on-failure leaves the slot empty,
    # however far ahead node b's clock stamped the older failure.
    for now in (NOW, NOW + 2 * HOUR):
        assert not reconcile(svc, [first, second], now=now).creates


def updating(replicas: int, started: float) -> Service:
    svc = service(replicas, update__monitor_seconds=5.0)
    svc.spec_version = 2
    svc.update_status.state = UpdateStatus.UPDATING
    svc.update_status.started_at.FromNanoseconds(int(started * 1e9))
    return svc


@SKEWS
def test_an_update_monitor_is_measured_on_the_controllers_clock(skew: float) -> None:
    svc = updating(1, started=NOW - 30)
    task = running(svc, 1, "a", at=NOW - 2)
    task.status.timestamp.FromNanoseconds(int((NOW - 2 + skew) * 1e9))
    plan = reconcile(svc, [task])
    assert plan.service is None
    assert plan.wake_at == NOW + 3
    later = reconcile(svc, [task], now=NOW + 3.5)
    assert later.service is not None
    assert later.service.update_status.state == UpdateStatus.COMPLETED


@SKEWS
def test_update_failures_are_those_the_controller_saw_after_the_start(skew: float) -> None:
    svc = updating(2, started=NOW - 10)
    ok = running(svc, 1, "a")
    after = ended(running(svc, 2, "b"), TaskState.FAILED, exit_code=1, at=NOW - 1, agent_skew=skew)
    plan = reconcile(svc, [ok, after])
    assert plan.service is not None and plan.service.update_status.state == UpdateStatus.PAUSED
    before = ended(
        running(svc, 2, "b"), TaskState.FAILED, exit_code=1, at=NOW - 20, agent_skew=skew
    )
    before.desired_state = TaskState.SHUTDOWN
    replacement = running(svc, 2, "c")
    plan = reconcile(svc, [ok, before, replacement])
    assert plan.service is None or plan.service.update_status.state != UpdateStatus.PAUSED


def test_a_task_no_controller_stamped_is_stamped_now_and_waits_its_delay() -> None:
    svc = service(1, task__restart_policy__delay_seconds=5.0)
    failed = ended(
        running(svc, 1, "a"), TaskState.FAILED, exit_code=1, at=NOW - 2, agent_skew=-HOUR
    )
    failed.ClearField("observed_at")
    plan = reconcile(svc, [failed])
    assert not plan.creates
    stamped = [t for t in plan.updates if t.id == failed.id]
    assert stamped and stamped[0].observed_at.ToNanoseconds() == int(NOW * 1e9)
    assert plan.wake_at == NOW + 5
