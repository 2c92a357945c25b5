"""Restart policy: whether, and when, a finished task's slot gets a new task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.tasks import failed, observed_at
from dockyard.v1.workloads_pb2 import RestartPolicy, Service, Task


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    # When the restart is due, or (no restart) when to decide again; 0.0: never.
    # Seconds since the epoch, on the controller's clock.
    at: float = 0.0
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
    if last.status.state == TaskState.ORPHANED or (
        last.desired_state == TaskState.SHUTDOWN
        and last.status.state not in (TaskState.FAILED, TaskState.COMPLETE)
    ):
        return RestartDecision(True, now, "replacing a task that was moved away")
    policy = service.spec.task.restart_policy
    if policy.condition == RestartPolicy.NONE:
        return RestartDecision(False, reason="restart condition is none")
    if policy.condition == RestartPolicy.ON_FAILURE and not failed(last):
        return RestartDecision(False, reason="completed successfully")
    if policy.max_attempts:
        gave_up = _gave_up(policy, history, now)
        if gave_up is not None:
            return gave_up
    due = observed_at(last) + policy.delay_seconds
    return RestartDecision(True, max(due, now) if due > now else now)


def _gave_up(policy: RestartPolicy, history: Sequence[Task], now: float) -> RestartDecision | None:
    """Without a window, `attempt` (restarts of the slot so far, carried from
    task to task) counts, so reaped history forgets nothing. With a window, the
    tasks that ended in it count, and the slot wakes when enough have left it."""
    reason = f"gave up after {policy.max_attempts} restarts"
    if not policy.window_seconds:
        return (
            RestartDecision(False, reason=reason)
            if history[-1].attempt >= policy.max_attempts
            else None
        )
    ended = sorted(t for t in (observed_at(t) for t in history) if t >= now - policy.window_seconds)
    if len(ended) <= policy.max_attempts:
        return None
    # Restarts resume once no more than max_attempts ends are left in the window.
    resume = ended[len(ended) - policy.max_attempts - 1] + policy.window_seconds
    return RestartDecision(
        False, math.nextafter(resume, math.inf), f"{reason} within {policy.window_seconds:g}s"
    )
