"""Each service's name with its running tasks' addresses, kept as tasks change.

The network map's DNS part: instead of walking every task of every service on each
look (30,000 tasks every half second during a scale-up), each changed task's
contribution (its service and address while it is RUNNING and meant to run) is patched
in, and only the services whose addresses changed are sorted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.common.states import TaskState
from dockyard.v1.workloads_pb2 import Service, Task

__all__ = ["Names", "ServiceNames", "full_names"]

RUNNING = TaskState.RUNNING  # looked up once: an enum attribute costs on every task
Names = tuple[tuple[str, tuple[str, ...]], ...]
"""(service name, its running tasks' addresses sorted), sorted by name."""


def _contribution(task: Task | None) -> tuple[str, str] | None:
    """(service ID, address) of a task that answers for its service's name."""
    if task is None or not task.status.address:
        return None
    if task.status.state != RUNNING or task.desired_state > RUNNING:
        return None
    return task.service_id, task.status.address


class ServiceNames:
    """The names part of the network map, patched per changed task.

    Args:
        tasks: The view's tasks by ID (read, never changed).
    """

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self._tasks = tasks
        self._held: dict[str, tuple[str, str]] = {}  # task ID -> (service ID, address)
        self._by_service: dict[str, dict[str, str]] = {}  # service ID -> task ID -> address
        self._sorted: dict[str, tuple[str, ...]] = {}  # service ID -> addresses, sorted

    def reset(self) -> None:
        """Forget everything and take every task of the view again."""
        self._held.clear()
        self._by_service.clear()
        self._sorted.clear()
        self.update(list(self._tasks))

    def update(self, task_ids: Iterable[str]) -> None:
        """Take the current state of these tasks (put, changed or removed)."""
        for task_id in task_ids:
            new = _contribution(self._tasks.get(task_id))
            old = self._held.get(task_id)
            if new == old:
                continue
            if old is not None:
                self._drop(task_id, old[0])
            if new is not None:
                self._held[task_id] = new
                self._by_service.setdefault(new[0], {})[task_id] = new[1]
                self._sorted.pop(new[0], None)

    def _drop(self, task_id: str, service_id: str) -> None:
        del self._held[task_id]
        addresses = self._by_service[service_id]
        del addresses[task_id]
        if not addresses:
            del self._by_service[service_id]
        self._sorted.pop(service_id, None)

    def addresses(self, service_id: str) -> tuple[str, ...]:
        cached = self._sorted.get(service_id)
        if cached is None:
            cached = tuple(sorted(self._by_service.get(service_id, {}).values()))
            self._sorted[service_id] = cached
        return cached

    def names(self, services: Iterable[Service]) -> Names:
        """Every service's name with its running tasks' addresses, sorted."""
        return tuple(sorted((s.spec.name, self.addresses(s.id)) for s in services))


def full_names(services: Iterable[Service], tasks: Iterable[Task]) -> Names:
    """The same, computed from every task (what `ServiceNames` must always equal)."""
    by_service: dict[str, list[str]] = {}
    for task in tasks:
        held = _contribution(task)
        if held is not None:
            by_service.setdefault(held[0], []).append(held[1])
    return tuple(sorted((s.spec.name, tuple(sorted(by_service.get(s.id, [])))) for s in services))
