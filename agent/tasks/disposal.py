"""Stops and removes a task's container (and its secret files), once at a time each."""

from __future__ import annotations

import asyncio

import structlog

from dockyard.agent.executor import Executor
from dockyard.agent.secret_files import SecretFiles
from dockyard.v1.workloads_pb2 import Task

__all__ = ["DEFAULT_STOP_GRACE", "Disposer", "stop_grace"]

log = structlog.get_logger(__name__)

DEFAULT_STOP_GRACE = 10.0


def stop_grace(task: Task) -> float:
    """Seconds between SIGTERM and SIGKILL for the task's container."""
    container = task.spec.container
    if container.HasField("stop_grace_seconds"):
        return container.stop_grace_seconds
    return DEFAULT_STOP_GRACE


class Disposer:
    """Shared by the task controllers (a task left the set) and the worker's orphan sweep
    (a container of no task): a container already being removed is not removed twice."""

    def __init__(self, executor: Executor, secrets: SecretFiles | None) -> None:
        self.executor = executor
        self.secrets = secrets
        self._disposing: set[str] = set()

    async def dispose(self, task_id: str, container_id: str, grace: float) -> None:
        """Stop and remove the container; failures are logged (the next sweep retries)."""
        if container_id in self._disposing:
            return
        self._disposing.add(container_id)
        try:
            await self.executor.stop(container_id, grace)
            await self.executor.remove(container_id)
            await self.remove_secrets(task_id)
            log.info("worker.removed", task_id=task_id, container_id=container_id)
        except Exception as exc:  # any backend failure: the container stays for the sweep
            log.warning("worker.remove_failed", container_id=container_id, error=str(exc))
        finally:
            self._disposing.discard(container_id)

    async def remove_secrets(self, task_id: str) -> None:
        if self.secrets is not None:
            await asyncio.to_thread(self.secrets.remove, task_id)
