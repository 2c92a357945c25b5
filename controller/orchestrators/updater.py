"""Rolling updates: replace outdated tasks in batches, watch the new ones, and
pause or roll back when too many of them fail (Docker Swarm's semantics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dockyard.common.states import TaskState
from dockyard.common.timestamps import now_timestamp, to_seconds
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.tasks import failed, observed_at, shut_down
from dockyard.v1.workloads_pb2 import Service, ServiceSpec, Task, UpdateConfig, UpdateStatus

Status = UpdateStatus.State
ACTIVE = (Status.UPDATING, Status.ROLLBACK_STARTED)
NewTask = Callable[[Service, int, str], Task]


@dataclass
class UpdateProgress:
    """In-memory per service: when this leader last started a batch.

    The service record's `update_status.last_batch_at` says the same for every
    leader; this copy covers a round whose service write lost a race while its
    task creates went in.
    """

    last_batch_at: float = 0.0


def plan_update(
    service: Service,
    running: Sequence[Task],
    all_tasks: Sequence[Task],
    plan: Plan,
    now: float,
    progress: UpdateProgress,
    make_task: NewTask,
) -> None:
    """Add this round's update steps for `service` to `plan`."""
    status = service.update_status
    current = [t for t in running if t.spec_version >= service.spec_version]
    outdated = [t for t in running if t.spec_version < service.spec_version]
    _retire_replaced(current, outdated, plan)
    if status.state not in ACTIVE:
        return
    config = (
        service.spec.rollback if status.state == Status.ROLLBACK_STARTED else service.spec.update
    )
    failures = _failures(service, all_tasks)
    if failures and _too_many(failures, len(current) + len(failures), config):
        _on_failure(service, failures, config, plan)
        return
    if not outdated:
        _maybe_complete(service, current, config, now, plan)
        return
    in_flight = [t for t in current if t.status.state < TaskState.RUNNING]
    next_at = _last_batch_at(service, progress) + config.delay_seconds
    if in_flight or now < next_at:
        if not in_flight:
            plan.wake(next_at)
        return
    batch = sorted(outdated, key=lambda t: t.slot)[: config.parallelism or len(outdated)]
    for old in batch:
        plan.creates.append(make_task(service, old.slot, old.node_id if not old.slot else ""))
        if config.order != UpdateConfig.START_FIRST:
            plan.update(shut_down(old))
    progress.last_batch_at = now
    updated = Service()
    updated.CopyFrom(service)
    updated.update_status.last_batch_at.FromNanoseconds(int(now * 1e9))
    plan.service = updated


def _last_batch_at(service: Service, progress: UpdateProgress) -> float:
    """When the newest batch of this update (or rollback) started, on a leader's
    clock: the record's stamp (a new leader's only source) or this leader's own
    memory, whichever is later. A batch before the update began does not count."""
    status = service.update_status
    started = to_seconds(status.started_at)
    last = max(progress.last_batch_at, to_seconds(status.last_batch_at))
    return last if last >= started else 0.0


def _retire_replaced(current: Sequence[Task], outdated: Sequence[Task], plan: Plan) -> None:
    """start-first: an outdated task goes once its slot's new task runs."""
    running_keys = {
        (t.slot, t.node_id if not t.slot else "")
        for t in current
        if t.status.state == TaskState.RUNNING
    }
    for old in outdated:
        if (old.slot, old.node_id if not old.slot else "") in running_keys:
            plan.update(shut_down(old))


def _failures(service: Service, tasks: Sequence[Task]) -> list[Task]:
    started = to_seconds(service.update_status.started_at)
    return [
        t
        for t in tasks
        if t.spec_version == service.spec_version
        and failed(t)
        and observed_at(t) >= started
        and t.status.state != TaskState.ORPHANED
    ]


def _too_many(failures: Sequence[Task], updated: int, config: UpdateConfig) -> bool:
    return len(failures) / max(1, updated) > config.max_failure_ratio


def _on_failure(
    service: Service, failures: Sequence[Task], config: UpdateConfig, plan: Plan
) -> None:
    if config.failure_action == UpdateConfig.CONTINUE:
        return
    task = failures[-1]
    reason = f"task {task.id[:12]} failed: {task.status.error or task.status.message}"
    updated = Service()
    updated.CopyFrom(service)
    rolling_back = service.update_status.state == Status.ROLLBACK_STARTED
    if (
        config.failure_action == UpdateConfig.ROLLBACK
        and not rolling_back
        and service.HasField("previous_spec")
    ):
        _swap_specs(updated)
        updated.spec_version += 1
        _set(updated, Status.ROLLBACK_STARTED, f"update rolled back: {reason}")
    else:
        _set(
            updated,
            Status.ROLLBACK_PAUSED if rolling_back else Status.PAUSED,
            f"{'rollback' if rolling_back else 'update'} paused: {reason}",
        )
    plan.service = updated


def _maybe_complete(
    service: Service, current: Sequence[Task], config: UpdateConfig, now: float, plan: Plan
) -> None:
    if any(t.status.state != TaskState.RUNNING for t in current):
        return
    newest = max((observed_at(t) for t in current), default=0.0)
    done_at = newest + config.monitor_seconds
    if now < done_at:
        plan.wake(done_at)
        return
    updated = Service()
    updated.CopyFrom(service)
    rolling_back = service.update_status.state == Status.ROLLBACK_STARTED
    cause = service.update_status.message
    message = "update completed"
    if rolling_back:
        # Keep why an automatic rollback happened: it is the news for the user.
        message = (
            f"rollback completed after {cause}"
            if "rolled back" in cause
            else ("rollback completed")
        )
    _set(updated, Status.ROLLBACK_COMPLETED if rolling_back else Status.COMPLETED, message)
    updated.update_status.completed_at.CopyFrom(now_timestamp())
    plan.service = updated


def _swap_specs(service: Service) -> None:
    current = ServiceSpec()
    current.CopyFrom(service.spec)
    service.spec.CopyFrom(service.previous_spec)
    service.previous_spec.CopyFrom(current)


def _set(service: Service, state: Status.ValueType, message: str) -> None:
    service.update_status.state = state
    service.update_status.message = message
    if state == Status.ROLLBACK_STARTED:
        service.update_status.started_at.CopyFrom(now_timestamp())
        service.update_status.ClearField("last_batch_at")
