"""Which tasks hold each node's resources, patched per changed task.

A scheduler's NodeInfo depends on its node's record and on the tasks that hold the
node's resources (placed there, not yet reported stopped): their reservations, host
ports and services, fixed for a task's life. A task's status moving on from ASSIGNED to
RUNNING changes none of that, so only the nodes whose set of holders changed need their
NodeInfo rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.controller.scheduler.nodeinfo import holds_resources
from dockyard.v1.workloads_pb2 import Task

__all__ = ["Holders", "full_holders"]


class Holders:
    """Node ID -> the IDs of the tasks holding its resources, kept as tasks change.

    Args:
        tasks: The view's tasks by ID (read, never changed).
    """

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self._tasks = tasks
        self._node_of: dict[str, str] = {}  # task ID -> the node it holds
        self.by_node: dict[str, set[str]] = {}

    def reset(self) -> None:
        """Forget everything and take every task of the view again."""
        self._node_of.clear()
        self.by_node.clear()
        self.update(list(self._tasks))

    def update(self, task_ids: Iterable[str]) -> set[str]:
        """Take the current state of these tasks; return the nodes whose holders changed."""
        changed: set[str] = set()
        for task_id in task_ids:
            task = self._tasks.get(task_id)
            new = task.node_id if task is not None and _holds(task) else ""
            old = self._node_of.get(task_id, "")
            if new == old:
                continue
            if old:
                del self._node_of[task_id]
                held = self.by_node[old]
                held.discard(task_id)
                if not held:
                    del self.by_node[old]
                changed.add(old)
            if new:
                self._node_of[task_id] = new
                self.by_node.setdefault(new, set()).add(task_id)
                changed.add(new)
        return changed


def _holds(task: Task) -> bool:
    return bool(task.node_id) and holds_resources(task)


def full_holders(tasks: Iterable[Task]) -> dict[str, set[str]]:
    """The same, computed from every task (what `Holders.by_node` must equal)."""
    by_node: dict[str, set[str]] = {}
    for task in tasks:
        if _holds(task):
            by_node.setdefault(task.node_id, set()).add(task.id)
    return by_node
