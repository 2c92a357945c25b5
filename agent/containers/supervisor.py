"""`Supervisor`: one watcher per started container that applies `--rm` and the restart
policy each time it exits (dockerd's restart manager), with Docker's backoff.

The watchers are items of one `TaskScope` (one task group from the first watch to
`close`), kept by container id too: each is cancelled on its own (a user's start or
removal replaces or ends it). One that fails is logged (`task.failed`) and the others go
on: a bug in one container's restart handling does not end the agent.
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
from dockyard.common.taskscope import TaskScope, run_to_end

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
        self._scope = TaskScope("container-supervisor")

    async def watch(self, container_id: str) -> None:
        """Watch the container (nothing if it is watched already)."""
        if container_id in self._watchers:
            return
        await self._scope.open()  # at the first watch (nothing after)
        if container_id in self._watchers:  # watched while the scope opened
            return
        # The watcher drops its own entry as it ends (no done callback: each one held a
        # closure and a copy of the context for as long as the container runs).
        task = self._scope.spawn(self._watch(container_id), f"supervise-{container_id[:12]}")
        self._watchers[container_id] = task

    def _drop(self, container_id: str) -> None:
        if self._watchers.get(container_id) is asyncio.current_task():
            del self._watchers[container_id]

    async def forget(self, container_id: str) -> None:
        """Stop watching the container (unless this is its own watcher calling)."""
        task = self._watchers.pop(container_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop every watcher and wait for them; the containers keep running."""
        await self._scope.close()
        self._watchers.clear()

    async def _watch(self, container_id: str) -> None:
        try:
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
                    # Not watched any more: the removal's forget() must not wait for this
                    # watcher, which waits for the removal (close() still does).
                    self._drop(container_id)
                    await run_to_end(self._auto_remove(container_id))
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
                    await run_to_end(self._runtime.start(container_id))
                except ContainerRuntimeError as exc:
                    log.warning(
                        "container.restart_failed", container_id=container_id, error=str(exc)
                    )
        finally:
            self._drop(container_id)  # ended: not watched (a new watcher may be by now)
