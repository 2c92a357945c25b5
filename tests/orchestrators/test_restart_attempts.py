"""`--restart-max-attempts`: a slot whose tasks keep failing is restarted
exactly that many times, then left empty, however much history was reaped."""

from __future__ import annotations

import pytest

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.reaper import HISTORY_PER_SLOT, plan_reaping
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.v1.workloads_pb2 import RestartPolicy, Task

from .helpers import NOW, applied, node, service

NODES = {"a": node("a")}


def crash_loop(max_attempts: int, window: float, rounds: int = 40) -> list[Task]:
    """Run the planner (and the reaper, as the loop does) while every task it
    makes fails at once; return every task ever created."""
    svc = service(
        1,
        task__restart_policy__condition=RestartPolicy.ANY,
        task__restart_policy__delay_seconds=0.0,
        task__restart_policy__max_attempts=max_attempts,
        task__restart_policy__window_seconds=window,
    )
    tasks: list[Task] = []
    made: list[Task] = []
    now = NOW
    for _ in range(rounds):
        plan = reconcile_replicated(svc, tasks, NODES, now, 10.0, UpdateProgress())
        plan_reaping(tasks, plan)
        for task in plan.creates:
            task.node_id = "a"
            task.status.state = TaskState.FAILED
            task.status.exit_code = 1
            task.observed_at.FromNanoseconds(int(now * 1e9))
            task.meta.created_at.FromNanoseconds(int(now * 1e9))
            task.meta.version = 1
        made += plan.creates
        tasks = applied(tasks, plan)
        now += 1.0
    return made


@pytest.mark.parametrize("max_attempts", [1, 2, HISTORY_PER_SLOT + 2])
@pytest.mark.parametrize("window", [0.0, 3600.0], ids=["no-window", "window"])
def test_restarts_stop_at_max_attempts(max_attempts: int, window: float) -> None:
    made = crash_loop(max_attempts, window)
    assert len(made) == 1 + max_attempts
    assert [t.attempt for t in made] == list(range(max_attempts + 1))


def test_a_window_lets_restarts_resume_once_old_failures_leave_it() -> None:
    made = crash_loop(2, window=10.0, rounds=30)
    # Three tasks (one plus two restarts) fail within ten seconds, then the slot
    # waits until the oldest failure leaves the window, and so on.
    assert 3 < len(made) < 30


def test_a_slot_that_gave_up_within_a_window_wakes_when_it_may_restart() -> None:
    svc = service(
        1,
        task__restart_policy__condition=RestartPolicy.ANY,
        task__restart_policy__max_attempts=1,
        task__restart_policy__window_seconds=60.0,
    )
    history = []
    for i, at in enumerate((NOW - 30, NOW - 10)):
        task = Task(id=f"t{i}", service_id="svc", slot=1, node_id="a", attempt=i)
        task.spec.CopyFrom(svc.spec.task)
        task.desired_state = TaskState.SHUTDOWN
        task.status.state = TaskState.FAILED
        task.status.exit_code = 1
        task.observed_at.FromNanoseconds(int(at * 1e9))
        task.meta.created_at.FromNanoseconds(int(at * 1e9))
        history.append(task)
    plan = reconcile_replicated(svc, history, NODES, NOW, 10.0, UpdateProgress())
    assert not plan.creates
    assert plan.wake_at is not None and NOW + 30 <= plan.wake_at < NOW + 30.001
    later = reconcile_replicated(svc, history, NODES, plan.wake_at, 10.0, UpdateProgress())
    assert [t.slot for t in later.creates] == [1]
