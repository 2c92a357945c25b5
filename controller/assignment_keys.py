"""Per node, what its assignment set depends on, patched per changed task.

The assigner sends a node its whole set when what the agent acts on changes: which
tasks it must know, their desired state and spec version (and, for a service whose
registry credentials go along, whether the task may still pull). A task's status moving
on (ASSIGNED to RUNNING, say) changes none of that, so a node whose tasks only report
progress need not have its set rebuilt and compared: these keys tell the assigner which
nodes to look at, at the cost of the tasks that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.tasks import TERMINAL
from dockyard.v1.workloads_pb2 import Task

__all__ = ["AssignmentKeys", "TaskKey", "full_keys", "task_key"]

ASSIGNED = TaskState.ASSIGNED
RUNNING = TaskState.RUNNING

TaskKey = tuple[int, int, bool]
"""(desired state, spec version, may still pull with the service's credentials)."""
NeedsAuth = Callable[[str], bool]
"""Whether a service's credentials go out with its tasks (service ID -> bool)."""


def task_key(task: Task, needs_auth: NeedsAuth) -> TaskKey | None:
    """What the task's node acts on; None: the node's agent need not know it."""
    state = task.status.state
    if state < ASSIGNED:
        return None
    desired = task.desired_state
    if desired > RUNNING and state in TERMINAL:
        return None
    to_start = state < RUNNING and desired <= RUNNING and needs_auth(task.service_id)
    return desired, task.spec_version, to_start


class AssignmentKeys:
    """Node ID -> task ID -> key, kept as tasks change.

    Args:
        tasks: The view's tasks by ID (read, never changed).
        needs_auth: Whether a service's credentials go out with its tasks.
    """

    def __init__(self, tasks: Mapping[str, Task], needs_auth: NeedsAuth) -> None:
        self._tasks = tasks
        self._needs_auth = needs_auth
        self._held: dict[str, tuple[str, TaskKey]] = {}  # task ID -> (node ID, key)
        self.by_node: dict[str, dict[str, TaskKey]] = {}

    def reset(self) -> None:
        """Forget everything and take every task of the view again."""
        self._held.clear()
        self.by_node.clear()
        self.update(list(self._tasks))

    def update(self, task_ids: Iterable[str]) -> set[str]:
        """Take the current state of these tasks; return the nodes whose keys changed."""
        changed: set[str] = set()
        for task_id in task_ids:
            task = self._tasks.get(task_id)
            key = None if task is None or not task.node_id else task_key(task, self._needs_auth)
            new = (task.node_id, key) if task is not None and key is not None else None
            old = self._held.get(task_id)
            if new == old:
                continue
            if old is not None:
                self._drop(task_id, old[0])
                changed.add(old[0])
            if new is not None:
                self._held[task_id] = new
                self.by_node.setdefault(new[0], {})[task_id] = new[1]
                changed.add(new[0])
        return changed

    def _drop(self, task_id: str, node_id: str) -> None:
        del self._held[task_id]
        keys = self.by_node[node_id]
        del keys[task_id]
        if not keys:
            del self.by_node[node_id]


def full_keys(tasks: Iterable[Task], needs_auth: NeedsAuth) -> dict[str, dict[str, TaskKey]]:
    """The same, computed from every task (what `AssignmentKeys.by_node` must equal)."""
    by_node: dict[str, dict[str, TaskKey]] = {}
    for task in tasks:
        key = task_key(task, needs_auth) if task.node_id else None
        if key is not None:
            by_node.setdefault(task.node_id, {})[task.id] = key
    return by_node
