"""What one reconciliation decides: tasks to create, tasks to change, the
service's status to write, and when to look again."""

from __future__ import annotations

from dataclasses import dataclass, field

from dockyard.v1.workloads_pb2 import Service, Task


@dataclass
class Plan:
    creates: list[Task] = field(default_factory=list)
    updates: list[Task] = field(default_factory=list)
    deletes: list[tuple[str, int]] = field(default_factory=list)  # (task id, version)
    service: Service | None = None
    wake_at: float | None = None
    _updated: set[str] = field(default_factory=set, repr=False, compare=False)

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def update(self, task: Task) -> None:
        """Record a changed task, replacing an earlier change of the same task (which
        moves to the end, as the latest change)."""
        if any(t.id == task.id for t in self.updates[-1:]):
            self.updates[-1] = task
            return
        if task.id in self._updated:
            self.updates = [t for t in self.updates if t.id != task.id]
        self._updated.add(task.id)
        self.updates.append(task)

    def forget(self, task_id: str) -> None:
        """Drop the change of a task (it is deleted instead)."""
        if task_id in self._updated:
            self._updated.discard(task_id)
            self.updates = [t for t in self.updates if t.id != task_id]

    def is_empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes) and self.service is None
