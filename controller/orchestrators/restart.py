"""Restart policy: whether, and when, a finished task's slot gets a new task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dockyard.controller.orchestrators.tasks import State, failed, observed_at
from dockyard.v1.workloads_pb2 import RestartPolicy, Service, Task


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    at: float = 0.0  # when the restart is due (seconds since the epoch)
    reason: str = ""


def decide(service: Service, history: Sequence[Task], now: float) -> RestartDecision:
    """Decide for a slot whose newest task (`history[-1]`) ended.

    Every time here is a controller's (`observed_at`, `now`): an agent's clock
    never decides when a delay is over or what falls in the window.

    A task that the orchestrator itself shut down or that was orphaned by a
    lost node is replaced at once; one that ended on its own follows the
    service's restart policy (condition, delay, attempts within a window).
    """
    last = history[-1]
    if last.status.state == State.ORPHANED or (
        last.desired_state == State.SHUTDOWN
        and last.status.state not in (State.FAILED, State.COMPLETE)
    ):
        return RestartDecision(True, now, "replacing a task that was moved away")
    policy = service.spec.task.restart_policy
    if policy.condition == RestartPolicy.NONE:
        return RestartDecision(False, reason="restart condition is none")
    if policy.condition == RestartPolicy.ON_FAILURE and not failed(last):
        return RestartDecision(False, reason="completed successfully")
    if policy.max_attempts:
        window_start = now - policy.window_seconds if policy.window_seconds else 0.0
        attempts = sum(1 for t in history if observed_at(t) >= window_start)
        if attempts > policy.max_attempts:
            return RestartDecision(False, reason=f"gave up after {policy.max_attempts} restarts")
    due = observed_at(last) + policy.delay_seconds
    return RestartDecision(True, max(due, now) if due > now else now)
