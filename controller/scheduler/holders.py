"""Which tasks hold each node's resources, patched per changed task.

A scheduler's NodeInfo depends on its node's record and on the tasks that hold the
node's resources (placed there, not yet reported stopped): their reservations, host
ports and services, fixed for a task's life. A task's status moving on from ASSIGNED to
RUNNING changes none of that, so only the nodes whose set of holders changed need their
NodeInfo changed, and only by the tasks that came or went (`patch_infos`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.controller.scheduler.nodeinfo import NodeInfo, holds_resources
from dockyard.v1.workloads_pb2 import Task

__all__ = ["Holders", "Move", "full_holders", "patch_infos"]

Move = tuple[str, str, str]
"""(task ID, the node whose resources it held before or "", the node it holds now or "")."""


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
        for _, old, new in self.moves(task_ids):
            changed.update(n for n in (old, new) if n)
        return changed

    def moves(self, task_ids: Iterable[str]) -> list[Move]:
        """Take the current state of these tasks; return each one whose holding changed:
        (task ID, the node it held before or "", the node it holds now or "")."""
        moved: list[Move] = []
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
            if new:
                self._node_of[task_id] = new
                self.by_node.setdefault(new, set()).add(task_id)
            moved.append((task_id, old, new))
        return moved


def patch_infos(
    infos: Mapping[str, NodeInfo], moves: Iterable[Move], tasks: Mapping[str, Task]
) -> None:
    """Apply ``moves`` to the node infos in place: a task that left a node gives back
    its resources there, one that arrived takes them (what a rebuild would hold)."""
    for task_id, old, new in moves:
        if old and (info := infos.get(old)) is not None:
            info.remove_task(task_id)
        if new and (info := infos.get(new)) is not None:
            info.add_task(tasks[task_id])


def _holds(task: Task) -> bool:
    return bool(task.node_id) and holds_resources(task)


def full_holders(tasks: Iterable[Task]) -> dict[str, set[str]]:
    """The same, computed from every task (what `Holders.by_node` must equal)."""
    by_node: dict[str, set[str]] = {}
    for task in tasks:
        if _holds(task):
            by_node.setdefault(task.node_id, set()).add(task.id)
    return by_node
