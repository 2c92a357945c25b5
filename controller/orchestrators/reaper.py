"""History: ended tasks stay visible (`service ps`) up to a limit per slot, then go."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.tasks import creation_order, is_terminal
from dockyard.v1.workloads_pb2 import Task

HISTORY_PER_SLOT = 5
# A restart policy with a window counts the slot's ended tasks in it, so up to
# max_attempts + 1 of them stay; past this many, a window stops counting.
MAX_HISTORY_PER_SLOT = 100


def plan_reaping(tasks: Sequence[Task], plan: Plan, keep: int = HISTORY_PER_SLOT) -> None:
    """Delete the oldest ended tasks of each slot beyond `keep`."""
    changed = {t.id: t for t in plan.updates}
    by_slot: dict[tuple[int, str], list[Task]] = defaultdict(list)
    for task in tasks:
        current = changed.get(task.id, task)
        if current.desired_state == TaskState.SHUTDOWN and is_terminal(current):
            by_slot[(task.slot, task.node_id if not task.slot else "")].append(task)
    for history in by_slot.values():
        history.sort(key=creation_order)
        for task in history[: max(0, len(history) - _kept(history[-1], keep))]:
            plan.forget(task.id)
            plan.deletes.append((task.id, task.meta.version))


def _kept(newest: Task, keep: int) -> int:
    """How much of a slot's history to keep: more when its restart policy counts it."""
    policy = newest.spec.restart_policy
    if keep and policy.max_attempts and policy.window_seconds:
        return max(keep, min(policy.max_attempts + 1, MAX_HISTORY_PER_SLOT))
    return keep
