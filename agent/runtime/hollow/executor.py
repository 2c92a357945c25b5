"""`HollowExecutor`: the worker's executor over a `HollowRuntime`; pulls are instant."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from dockyard.agent.executor import (
    LABEL_TASK_ID,
    ExecutorError,
    Progress,
    container_name,
    create_request,
)
from dockyard.agent.runtime.base import (
    ContainerConfig,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerStatus,
    ExitInfo,
)
from dockyard.agent.runtime.hollow.runtime import HollowRuntime
from dockyard.common.reference import InvalidReference, parse_reference
from dockyard.v1.workloads_pb2 import Task

__all__ = ["HollowExecutor"]


class HollowExecutor:
    """Implements `dockyard.agent.executor.Executor` with simulated containers."""

    def __init__(self, runtime: HollowRuntime | None = None) -> None:
        self.runtime = runtime or HollowRuntime()

    async def prepare(self, task: Task, progress: Progress) -> None:
        name = container_name(task)
        with contextlib.suppress(ContainerNotFound):
            info = await self.runtime.inspect(name)
            if info.labels.get(LABEL_TASK_ID) == task.id:
                return
            raise ExecutorError(f"container name {name} is taken by another container")
        image = task.spec.container.image
        if not image:
            raise ExecutorError("task spec has no image")
        try:
            parse_reference(image)
        except InvalidReference as exc:
            raise ExecutorError(f"invalid image reference {image!r}: {exc}") from exc
        request = create_request(task)
        await self.runtime.create(ContainerConfig(
            id="", name=request.name, image=request.image, lower_dirs=(),
            command=list(request.command) or None, entrypoint=list(request.entrypoint) or None,
            env=list(request.env), workdir=request.workdir or None, user=request.user or None,
            memory_bytes=request.memory_bytes, nano_cpus=request.nano_cpus,
            pids_limit=request.pids_limit, read_only=request.read_only,
            network="host" if request.network == "host" else "none",
            labels=dict(request.labels), hostname=request.hostname or None,
        ))  # fmt: skip

    async def start(self, task: Task) -> str:
        info = await self.runtime.inspect(container_name(task))
        if info.state.status is ContainerStatus.CREATED:
            await self.runtime.start(info.id)
        return info.id

    async def wait(self, container_id: str) -> ExitInfo:
        return await self.runtime.wait(container_id)

    async def stop(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.stop(container_id, grace)

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.remove(container_id, force=True)

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        try:
            session = await self.runtime.exec(container_id, cmd)
        except (ContainerNotFound, ContainerNotRunning) as exc:
            raise ExecutorError(str(exc)) from exc
        result = await asyncio.wait_for(session.collect(), timeout)
        return result.exit_code, (result.stdout + result.stderr).decode(errors="replace")

    async def address(self, container_id: str) -> str:
        return ""

    async def task_containers(self) -> dict[str, str]:
        return {info.labels[LABEL_TASK_ID]: info.id
                for info in await self.runtime.list(all=True)
                if info.labels.get(LABEL_TASK_ID)}  # fmt: skip
