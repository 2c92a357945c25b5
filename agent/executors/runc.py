"""`RuncExecutor`: tasks as containers of the node's `ContainerManager` (runc runtime).

The image is pulled through the manager's image service when it is not on the node;
containers are found again by name (derived from the task) and by the
`dockyard.task.id` label, so an agent restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from dockyard.agent.containers.errors import AlreadyExists, FailedPrecondition, NotFound
from dockyard.agent.containers.manager import ContainerManager
from dockyard.agent.executor import (
    LABEL_TASK_ID,
    ExecutorError,
    Progress,
    container_name,
    create_request,
)
from dockyard.agent.images.errors import ImageNotFound
from dockyard.agent.runtime.base import ContainerRuntimeError, ContainerStatus, ExitInfo
from dockyard.agent.secret_files import SecretFileError, SecretFiles
from dockyard.common.distribution.auth import Credentials
from dockyard.v1.workloads_pb2 import RegistryAuth, Task

__all__ = ["RuncExecutor"]

log = structlog.get_logger(__name__)

_MAX_OUTPUT = 4096


class RuncExecutor:
    """Implements `dockyard.agent.executor.Executor` over a `ContainerManager`."""

    def __init__(self, manager: ContainerManager, secrets: SecretFiles | None = None) -> None:
        self.manager = manager
        self.secrets = secrets
        self.image_sources: dict[str, tuple[str, ...]] = {}
        self.registry_auths: dict[str, RegistryAuth] = {}
        """Service ID -> the credentials its tasks pull with (`--with-registry-auth`)."""
        """Per image, the agents of other nodes that run it (from the assignment set):
        a pull fetches the layers from them first."""

    async def prepare(self, task: Task, progress: Progress) -> None:
        name = container_name(task)
        with contextlib.suppress(NotFound):
            view = await self.manager.inspect(name)
            if view.info.labels.get(LABEL_TASK_ID) == task.id:
                return  # made before a restart
            raise ExecutorError(f"container name {name} is taken by another container")
        image = task.spec.container.image
        if not image:
            raise ExecutorError("task spec has no image")
        try:
            self.manager.images.resolve(image)
        except ImageNotFound:
            progress(f"pulling {image}")
            auth = self.registry_auths.get(task.service_id)
            credentials = ({auth.registry: Credentials(auth.username, auth.password)}
                           if auth is not None else None)  # fmt: skip
            await self.manager.images.pull(image, peers=self.image_sources.get(image, ()),
                                           credentials=credentials)  # fmt: skip
            progress(f"pulled {image}")
        try:
            mounts = self.secrets.write(task) if self.secrets is not None else []
        except (SecretFileError, OSError) as exc:
            raise ExecutorError(f"secrets: {exc}") from exc
        try:
            await self.manager.create(create_request(task, mounts))
        except AlreadyExists:
            view = await self.manager.inspect(name)
            if view.info.labels.get(LABEL_TASK_ID) != task.id:
                raise

    async def start(self, task: Task) -> str:
        view = await self.manager.inspect(container_name(task))
        if view.info.state.status is ContainerStatus.CREATED:
            await self.manager.start_container(view.info.id)
        return view.info.id

    async def wait(self, container_id: str) -> ExitInfo:
        return await self.manager.wait(container_id)

    async def stop(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(NotFound, FailedPrecondition):
            await self.manager.stop(container_id, max(0.0, grace))

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.manager.remove(container_id, force=True)

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        try:
            session = await self.manager.exec(container_id, list(cmd))
        except (FailedPrecondition, NotFound, ContainerRuntimeError) as exc:
            raise ExecutorError(str(exc)) from exc
        try:
            result = await asyncio.wait_for(session.collect(), timeout)
        except TimeoutError:
            kill = getattr(session, "kill", None)
            if kill is not None:
                await kill()
            raise
        output = (result.stdout + result.stderr).decode(errors="replace")
        return result.exit_code, output[-_MAX_OUTPUT:]

    async def address(self, container_id: str) -> str:
        with contextlib.suppress(NotFound):
            network = (await self.manager.inspect(container_id)).info.network
            if network is not None and network.mode == "bridge":
                return network.ip_address
        return ""

    async def task_containers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for view in await self.manager.list(all=True):
            task_id = view.info.labels.get(LABEL_TASK_ID)
            if task_id:
                found[task_id] = view.info.id
        return found
