"""Global services: one task on every node that may run it, following nodes as
they join, leave, drain or change labels."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.replicated import history_by, refill, settle_finished
from dockyard.controller.orchestrators.survivors import one_per_key
from dockyard.controller.orchestrators.tasks import new_task, shut_down, stamp_unobserved
from dockyard.controller.orchestrators.updater import UpdateProgress, plan_update
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import Service, Task

Eligible = Callable[[Service, Node], bool]


def reconcile_global(
    service: Service,
    tasks: Sequence[Task],
    nodes: Mapping[str, Node],
    now: float,
    down_grace: float,
    progress: UpdateProgress,
    eligible: Eligible,
) -> Plan:
    """`eligible(service, node)` says whether the node satisfies the placement."""
    plan = Plan()
    tasks = stamp_unobserved(tasks, now, plan)
    placed = []
    for task in settle_finished(tasks, nodes, now, down_grace, plan):
        node = nodes.get(task.node_id)
        # A global task is made for one node: one without a node (however it got
        # written) belongs nowhere.
        if not task.node_id or (node is not None and not eligible(service, node)):
            plan.update(shut_down(task))
        else:
            placed.append(task)
    running = one_per_key(service, placed, lambda t: t.node_id, plan)
    running_nodes = {t.node_id for t in running}
    history = history_by(tasks, plan, lambda t: t.node_id)
    for node in nodes.values():
        if node.id in running_nodes or not _takes_new_tasks(node) or not eligible(service, node):
            continue
        refill(service, history.get(node.id, []), now, plan, 0, node.id)
    plan_update(
        service,
        running,
        tasks,
        plan,
        now,
        progress,
        lambda svc, slot, node_id: new_task(svc, 0, node_id),
    )
    return plan


def _takes_new_tasks(node: Node) -> bool:
    return node.status.state == NodeStatus.READY and node.spec.availability == NodeSpec.ACTIVE
