"""The worker's runtime seam: what a backend does for one task.

Swarmkit's `Executor`/`Controller` idea, cut to what the worker needs. The task executor
(`dockyard.agent.executors.task`, over the container service, for every runtime) turns a
task into a container and reports how it ended; each task's controller
(`dockyard.agent.tasks.controller`, run by the worker) owns the task's states and never
talks to a runtime directly.

Every call is idempotent per task, so a worker that restarts in the middle of a step can
repeat it: `prepare` of a task whose container exists does nothing, `start` of a running
container returns it, `stop` and `remove` of a missing container succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from dockyard.agent.runtime.base import ExitInfo
from dockyard.v1.workloads_pb2 import Task

__all__ = [
    "LABEL_SERVICE_ID",
    "LABEL_SERVICE_NAME",
    "LABEL_SLOT",
    "LABEL_TASK_ID",
    "Executor",
    "ExecutorError",
    "ExitInfo",
    "Progress",
    "Started",
    "container_name",
    "task_labels",
]

LABEL_TASK_ID = "dockyard.task.id"
LABEL_SERVICE_ID = "dockyard.service.id"
LABEL_SERVICE_NAME = "dockyard.service.name"
LABEL_SLOT = "dockyard.slot"

Progress = Callable[[str], None]
"""Called with a short line while a task prepares ("pulling busybox:latest")."""


class ExecutorError(Exception):
    """A backend could not do what the worker asked; the message says why."""


class Started(NamedTuple):
    """A started task's container: its id, and its address on the node's bridge network
    ("" when it has none), as the start saw it (no second look-up)."""

    container_id: str
    address: str


@runtime_checkable
class Executor(Protocol):
    """Runs the containers of one node's tasks."""

    async def prepare(self, task: Task, progress: Progress) -> None:
        """Make the task's container: pull the image when it is missing, then create it.

        Raises:
            Exception: the image or the config is bad (the task is REJECTED).
        """
        ...

    async def start(self, task: Task) -> Started:
        """Start the container `prepare` made (unless it runs already); its id and address."""
        ...

    async def wait(self, container_id: str) -> ExitInfo:
        """Wait until the container has exited; how it ended."""
        ...

    async def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; nothing if it is not running."""
        ...

    async def remove(self, container_id: str) -> None:
        """Delete the container (killed first if it runs); nothing if it is gone."""
        ...

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run `cmd` in the running container; its exit code and output (stdout+stderr).

        Raises:
            TimeoutError: it did not finish within `timeout` seconds (it is killed).
        """
        ...

    async def task_containers(self) -> dict[str, str]:
        """Every container on the node made for a task: task id -> container id."""
        ...


def container_name(task: Task) -> str:
    """`<service_name>.<slot>.<task_id[:12]>`; a global task's slot part is its node id."""
    slot = str(task.slot) if task.slot else task.node_id[:12]
    service = task.service_name or task.service_id[:12] or "task"
    return f"{service}.{slot}.{task.id[:12]}"


def task_labels(task: Task) -> dict[str, str]:
    """The labels that tie a container to its task (the spec's labels come first)."""
    labels = dict(task.spec.container.labels)
    labels.update(
        {
            LABEL_TASK_ID: task.id,
            LABEL_SERVICE_ID: task.service_id,
            LABEL_SERVICE_NAME: task.service_name,
            LABEL_SLOT: str(task.slot) if task.slot else task.node_id,
        }
    )
    return labels
