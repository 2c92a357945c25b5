"""Where existing tasks may stay: lost nodes and drained nodes."""

from __future__ import annotations

from collections.abc import Mapping

from dockyard.common.states import TaskState
from dockyard.common.timestamps import to_seconds
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.tasks import is_terminal, set_status, shut_down
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import Task


def move_off_lost_nodes(
    tasks: list[Task], nodes: Mapping[str, Node], now: float, down_grace: float, plan: Plan
) -> list[Task]:
    """Orphan tasks on nodes that are gone or DOWN for longer than the grace,
    shut down tasks on drained nodes; return the tasks still in place."""
    kept = []
    for task in tasks:
        if not task.node_id or is_terminal(task):
            kept.append(task)
            continue
        node = nodes.get(task.node_id)
        if node is None or _down_too_long(node, now, down_grace, plan):
            orphan = shut_down(task)
            reason = "node removed" if node is None else f"node {node.spec.name} is down"
            set_status(orphan, TaskState.ORPHANED, reason)
            plan.update(orphan)
        elif node.spec.availability == NodeSpec.DRAIN and task.desired_state <= TaskState.RUNNING:
            plan.update(shut_down(task))
        else:
            kept.append(task)
    return kept


def _down_too_long(node: Node, now: float, grace: float, plan: Plan) -> bool:
    if node.status.state != NodeStatus.DOWN:
        return False
    down_for = now - to_seconds(node.status.state_changed_at)
    if down_for >= grace:
        return True
    plan.wake(to_seconds(node.status.state_changed_at) + grace)
    return False
