"""Jobs: tasks that run to completion; `completions` must succeed, at most
`parallelism` run at once, and the job fails after `backoff_limit` failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dockyard.common.states import TaskState
from dockyard.common.timestamps import now_timestamp
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.replicated import settle_finished
from dockyard.controller.orchestrators.survivors import best, one_per_key
from dockyard.controller.orchestrators.tasks import (
    failed,
    new_task,
    shut_down,
    stamp_unobserved,
)
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task


def reconcile_job(
    service: Service,
    tasks: Sequence[Task],
    nodes: Mapping[str, Node],
    now: float,
    down_grace: float,
) -> Plan:
    plan = Plan()
    tasks = stamp_unobserved(tasks, now, plan)
    job = service.spec.job
    succeeded_slots = {
        t.slot for t in tasks if t.status.state == TaskState.COMPLETE and t.status.exit_code == 0
    }
    running = _running(
        service, settle_finished(tasks, nodes, now, down_grace, plan), succeeded_slots, plan
    )
    failures = sum(1 for t in tasks if failed(t) and t.status.state != TaskState.ORPHANED)
    _record_status(service, len(succeeded_slots), failures, plan)
    if len(succeeded_slots) >= job.completions or failures > job.backoff_limit:
        return plan
    busy_slots = {t.slot for t in running}
    free = max(0, job.parallelism - len(running))
    for slot in range(1, job.completions + 1):
        if free == 0:
            break
        if slot in succeeded_slots or slot in busy_slots:
            continue
        attempts = sum(1 for t in tasks if t.slot == slot)
        plan.creates.append(new_task(service, slot, attempt=attempts))
        free -= 1
    return plan


def _running(service: Service, running: list[Task], succeeded: set[int], plan: Plan) -> list[Task]:
    """At most one live task per slot still to do, and at most `parallelism` of them."""
    job = service.spec.job
    wanted = []
    for task in running:
        if 1 <= task.slot <= job.completions and task.slot not in succeeded:
            wanted.append(task)
        else:
            plan.update(shut_down(task))
    one_each = one_per_key(service, wanted, lambda t: t.slot, plan)
    return best(service, one_each, job.parallelism, plan)


def _record_status(service: Service, succeeded: int, failures: int, plan: Plan) -> None:
    job = service.spec.job
    complete = succeeded >= job.completions or failures > job.backoff_limit
    status = service.job_status
    if (status.succeeded, status.failed, status.complete) == (succeeded, failures, complete):
        return
    updated = Service()
    updated.CopyFrom(service)
    updated.job_status.succeeded = succeeded
    updated.job_status.failed = failures
    updated.job_status.complete = complete
    if complete and not status.complete:
        updated.job_status.completed_at.CopyFrom(now_timestamp())
    plan.service = updated
