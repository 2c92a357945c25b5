"""Duplicates: at most one live task per slot (global: per node), whatever
double creates a deposed leader or a half-committed plan left behind.

The survivor is chosen from stored fields only, so every leader, in every
round, keeps the same task and shuts down the same others:

1. a task of the service's current spec version before an outdated one — the
   updater wants the current version in every slot, so keeping an outdated
   copy would undo an update step that already happened;
2. then the one furthest along (RUNNING before STARTING before PENDING): a
   running container is not traded for one that may never be placed;
3. then the oldest (`meta.created_at`, stamped by the store on the controller's
   clock), then the lowest id, so that ties are broken the same way everywhere.

A start-first update is the one time a slot holds two live tasks on purpose:
its outdated task and the new one that replaces it. While it is under way or
paused, one of each is kept (the updater retires the old one once the new one
runs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.tasks import creation_order, shut_down
from dockyard.v1.workloads_pb2 import Service, Task, UpdateConfig, UpdateStatus

UNDER_WAY = (
    UpdateStatus.UPDATING,
    UpdateStatus.PAUSED,
    UpdateStatus.ROLLBACK_STARTED,
    UpdateStatus.ROLLBACK_PAUSED,
)


def is_current(service: Service, task: Task) -> bool:
    return task.spec_version >= service.spec_version


def rank(service: Service, task: Task) -> tuple[bool, int, tuple[int, int, str]]:
    """Sort key: the best survivor first."""
    return (not is_current(service, task), -task.status.state, creation_order(task))


def one_per_key(
    service: Service, tasks: Sequence[Task], key: Callable[[Task], Hashable], plan: Plan
) -> list[Task]:
    """Shut down every live task but the survivor of its key; return the survivors
    (with the outdated twin of a start-first update, while it is replaced)."""
    groups: dict[Hashable, list[Task]] = defaultdict(list)
    for task in tasks:
        groups[key(task)].append(task)
    pairs = _start_first(service)
    kept = []
    for group in groups.values():
        ranked = sorted(group, key=lambda t: rank(service, t))
        survivors = ranked[:1]
        if pairs:
            outdated = [t for t in ranked if not is_current(service, t)]
            if is_current(service, ranked[0]) and outdated:
                survivors.append(outdated[0])
        for task in ranked:
            if task not in survivors:
                plan.update(shut_down(task))
        kept.extend(survivors)
    return kept


def best(service: Service, tasks: Sequence[Task], count: int, plan: Plan) -> list[Task]:
    """Keep the `count` best tasks (by `rank`), shut down the rest."""
    ranked = sorted(tasks, key=lambda t: rank(service, t))
    for task in ranked[count:]:
        plan.update(shut_down(task))
    return ranked[:count]


def _start_first(service: Service) -> bool:
    """Whether a start-first update (or rollback) is under way or paused: a
    paused one keeps the old task wherever the new one does not run yet."""
    status = service.update_status.state
    if status not in UNDER_WAY:
        return False
    rolling_back = status in (UpdateStatus.ROLLBACK_STARTED, UpdateStatus.ROLLBACK_PAUSED)
    config = service.spec.rollback if rolling_back else service.spec.update
    return config.order == UpdateConfig.START_FIRST
