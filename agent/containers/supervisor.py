"""`Supervisor`: one watcher per started container that applies `--rm` and the restart
policy each time it exits (dockerd's restart manager), with Docker's backoff.

Each watcher is cancelled on its own (a user's start or removal replaces or ends it), so
they are kept by container id rather than in a task group; one that fails is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from dockyard.agent.containers.meta import ContainerMeta
from dockyard.agent.containers.policy import Backoff, should_restart
from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntime,
    ContainerRuntimeError,
    ExitInfo,
)

__all__ = ["Supervisor"]

log = structlog.get_logger(__name__)


class Supervisor:
    """Watches started containers.

    Args:
        runtime: Where the containers run.
        meta_of: The service's record of a container (None: it is gone).
        auto_remove: Removes an exited `--rm` container.
        on_exit: Told of each exit (the service's `die` event); must not block.
    """

    def __init__(
        self,
        runtime: ContainerRuntime,
        meta_of: Callable[[str], ContainerMeta | None],
        auto_remove: Callable[[str], Awaitable[None]],
        on_exit: Callable[[ContainerInfo, ExitInfo], None] | None = None,
    ) -> None:
        self._on_exit = on_exit
        self._runtime = runtime
        self._meta_of = meta_of
        self._auto_remove = auto_remove
        self._watchers: dict[str, asyncio.Task[None]] = {}

    def watch(self, container_id: str) -> None:
        """Watch the container (nothing if it is watched already)."""
        if container_id in self._watchers:
            return
        task = asyncio.create_task(self._watch(container_id), name=f"supervise-{container_id[:12]}")
        self._watchers[container_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._watchers.get(container_id) is t:
                del self._watchers[container_id]
            if not t.cancelled() and t.exception() is not None:
                log.error(
                    "container.supervisor_failed",
                    container_id=container_id,
                    error=repr(t.exception()),
                )

        task.add_done_callback(done)

    async def forget(self, container_id: str) -> None:
        """Stop watching the container (unless this is its own watcher calling)."""
        task = self._watchers.pop(container_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop every watcher; the containers keep running."""
        tasks = list(self._watchers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()

    async def _watch(self, container_id: str) -> None:
        backoff = Backoff()
        restarts = 0
        while True:
            try:
                exit_info = await self._runtime.wait(container_id)
                info = await self._runtime.inspect(container_id)
            except ContainerNotFound:
                return
            if self._on_exit is not None:
                self._on_exit(info, exit_info)
            meta = self._meta_of(container_id)
            if meta is None:
                return
            if meta.auto_remove:
                await asyncio.shield(self._auto_remove(container_id))
                return
            state = info.state
            ran = 0.0
            if state.started_at and state.finished_at:
                ran = (state.finished_at - state.started_at).total_seconds()
            delay = backoff.next(ran)
            policy = info.config.restart_policy
            if not should_restart(policy, exit_info.exit_code, meta.manually_stopped, restarts):
                return
            restarts += 1
            log.info(
                "container.restarting",
                container_id=container_id,
                policy=policy.name,
                exit_code=exit_info.exit_code,
                delay=delay,
                restarts=restarts,
            )
            await asyncio.sleep(delay)
            if meta.manually_stopped or self._meta_of(container_id) is None:
                return
            try:
                await asyncio.shield(self._runtime.start(container_id))
            except ContainerRuntimeError as exc:
                log.warning("container.restart_failed", container_id=container_id, error=str(exc))
