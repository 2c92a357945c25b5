"""Replicated services: keep N slots running, restart by policy, roll updates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.placement import move_off_lost_nodes
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.restart import decide
from dockyard.controller.orchestrators.survivors import one_per_key
from dockyard.controller.orchestrators.tasks import (
    creation_order,
    is_terminal,
    new_task,
    shut_down,
    stamp_unobserved,
)
from dockyard.controller.orchestrators.updater import UpdateProgress, plan_update
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

K = TypeVar("K")


def reconcile_replicated(
    service: Service,
    tasks: Sequence[Task],
    nodes: Mapping[str, Node],
    now: float,
    down_grace: float,
    progress: UpdateProgress,
) -> Plan:
    plan = Plan()
    tasks = stamp_unobserved(tasks, now, plan)
    replicas = service.spec.replicated.replicas
    in_range = []
    for task in settle_finished(tasks, nodes, now, down_grace, plan):
        if 1 <= task.slot <= replicas:
            in_range.append(task)
        else:
            plan.update(shut_down(task))
    running = one_per_key(service, in_range, lambda t: t.slot, plan)
    running_slots = {t.slot for t in running}
    history = history_by(tasks, plan, lambda t: t.slot)
    for slot in range(1, replicas + 1):
        if slot not in running_slots:
            refill(service, history.get(slot, []), now, plan, slot)
    plan_update(service, running, tasks, plan, now, progress, new_task)
    return plan


def settle_finished(
    tasks: Sequence[Task], nodes: Mapping[str, Node], now: float, down_grace: float, plan: Plan
) -> list[Task]:
    """Record ended tasks as history and move tasks off lost or drained nodes;
    return the tasks that are still meant to run where they are."""
    live = [t for t in tasks if t.desired_state <= TaskState.RUNNING]
    kept = move_off_lost_nodes(live, nodes, now, down_grace, plan)
    running = []
    for task in kept:
        if is_terminal(task):
            plan.update(shut_down(task))
        else:
            running.append(task)
    return running


def history_by(tasks: Sequence[Task], plan: Plan, key: Callable[[Task], K]) -> dict[K, list[Task]]:
    """Tasks grouped by slot (or node), as this plan leaves them, oldest first."""
    changed = {t.id: t for t in plan.updates}
    groups: dict[K, list[Task]] = defaultdict(list)
    for task in tasks:
        groups[key(task)].append(changed.get(task.id, task))
    for group in groups.values():
        group.sort(key=creation_order)
    return groups


def refill(
    service: Service, history: list[Task], now: float, plan: Plan, slot: int, node_id: str = ""
) -> None:
    """A new task for an empty slot (or a global service's node), when its
    restart policy allows one now; otherwise wake the plan when it will."""
    if not history:
        plan.creates.append(new_task(service, slot, node_id))
        return
    decision = decide(service, history, now)
    if not decision.restart:
        if decision.at:
            plan.wake(decision.at)
        return
    if decision.at > now:
        plan.wake(decision.at)
        return
    plan.creates.append(new_task(service, slot, node_id, attempt=history[-1].attempt + 1))
