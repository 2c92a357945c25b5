"""Jobs: tasks that run to completion; `completions` must succeed, at most
`parallelism` run at once, and the job fails after `backoff_limit` failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.replicated import settle_finished
from dockyard.controller.orchestrators.tasks import State, failed, new_task
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
    running = settle_finished(tasks, nodes, now, down_grace, plan)
    job = service.spec.job
    succeeded_slots = {
        t.slot for t in tasks if t.status.state == State.COMPLETE and t.status.exit_code == 0
    }
    failures = sum(1 for t in tasks if failed(t) and t.status.state != State.ORPHANED)
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
