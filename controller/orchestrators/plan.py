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

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def update(self, task: Task) -> None:
        """Record a changed task, replacing an earlier change of the same task."""
        self.updates = [t for t in self.updates if t.id != task.id]
        self.updates.append(task)

    def is_empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes) and self.service is None
