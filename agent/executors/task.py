"""`TaskExecutor`: the worker's `Executor` as a thin adapter over the `ContainerService`.

One adapter for every backend whose runtime sits behind the container service (runc,
hollow): a task becomes a typed `ContainerRequest` straight from its spec, checked once
by the service's `check_spec`. Containers are found again by name (derived from the task)
and by the `dockyard.task.id` label, so an agent restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

from dockyard.agent.containers.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageMissing,
    NotFound,
)
from dockyard.agent.containers.request import ContainerRequest, check_spec, parse_image_ref
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.executor import (
    LABEL_TASK_ID,
    ExecutorError,
    Progress,
    Started,
    container_name,
    task_labels,
)
from dockyard.agent.executors.templates import expander
from dockyard.agent.images.reference import Reference
from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerStatus,
    ExitInfo,
    NetworkMode,
    PortMapping,
    TmpfsMount,
    VolumeMount,
)
from dockyard.agent.secret_files import SecretFileError, SecretFiles, SecretMount
from dockyard.common.distribution.auth import Credentials
from dockyard.v1.workloads_pb2 import Mount, RegistryAuth, Task

__all__ = ["TaskExecutor", "task_request"]

log = structlog.get_logger(__name__)

_MAX_OUTPUT = 4096
_T = TypeVar("_T")
_U = TypeVar("_U")


def _network(task: Task, published: bool) -> NetworkMode:
    network = task.spec.container.network
    if network == "host":
        return "host"
    # On cluster networks the node's bridge is the container's way out and to the node's
    # DNS server (eth0), as Docker's docker_gwbridge is beside its overlays.
    joins = bool(task.networks)
    return "bridge" if network == "bridge" or published or joins else "none"


def _mounts(
    task: Task, secrets: Sequence[SecretMount], expand: Callable[[str], str] = str
) -> tuple[VolumeMount, ...]:
    if not task.spec.container.mounts and not secrets:
        return ()
    mounts = [
        VolumeMount(
            Path("/") if m.type == "volume" else Path(expand(m.source)),
            m.target,
            m.read_only,
            expand(m.source) if m.type == "volume" else "",
        )
        for m in task.spec.container.mounts
        if m.type in ("bind", "volume")
    ]
    return (*mounts, *(VolumeMount(Path(s.host_path), s.container_path, True) for s in secrets))


def _tuple(items: Sequence[_T], convert: Callable[[_T], _U]) -> tuple[_U, ...]:
    return tuple(map(convert, items)) if items else ()


def _ports(task: Task, meshes_ingress: bool) -> tuple[PortMapping, ...]:
    if not task.spec.ports:
        return ()
    return tuple(
        PortMapping(p.target_port, (p.protocol or "tcp").lower(), p.published_port)
        for p in task.spec.ports
        if not (meshes_ingress and p.publish_mode == "ingress")
    )


def _tmpfs(mounts: Sequence[Mount]) -> tuple[TmpfsMount, ...]:
    if not mounts:
        return ()
    return tuple(TmpfsMount(m.target, m.tmpfs_size_bytes) for m in mounts if m.type == "tmpfs")


@functools.lru_cache(maxsize=256)
def _image_ref(text: str) -> Reference:
    """An image reference parsed once per text: a node's tasks run a few images (each
    parse is a few regular expressions). A bad one is not kept: it raises each time."""
    return parse_image_ref("image", text)


def task_request(
    task: Task,
    secrets: Sequence[SecretMount] = (),
    node_hostname: str = "",
    meshes_ingress: bool = False,
) -> ContainerRequest:
    """The container the task runs: its spec, its name and labels, restart policy `no`.

    The controller's restart policy replaces failed tasks, so a container is never
    restarted by the node: it is one-run (`ephemeral`, a writable layer that need not
    survive a host crash). The task's published ports (swarm's `mode=host` publishing:
    on the node that runs it) go on the agent's bridge: `published_port` on the node to
    `target_port` in the container, 0 for a port the agent picks. Its ingress ports go
    there too unless `meshes_ingress` (the node's routing mesh reaches the task over the
    ingress network: the port is the mesh's, so several tasks may publish it on one
    node). `secrets` are the task's secret files (`dockyard.agent.secret_files`),
    bind-mounted read-only.

    Raises:
        InvalidArgument: naming the first bad field.
    """
    container, limits = task.spec.container, task.spec.resources.limits
    expand = expander(task, node_hostname)
    ports = _ports(task, meshes_ingress)
    # Tuples rather than lists: an empty one is not even allocated, and a filled one
    # of strings leaves the cyclic GC's sight after one pass, while every running task
    # holds its spec (about a dozen lists a task were walked by every collection).
    # Most of a task's repeated fields are empty: `_tuple` makes no generator for them.
    spec = ContainerSpec(
        id="",
        name=container_name(task),
        image=container.image,
        lower_dirs=(),
        command=tuple(container.command) or None,
        entrypoint=tuple(container.entrypoint) or None,
        env=_tuple(container.env, expand),
        workdir=container.workdir or None,
        user=container.user or None,
        memory_bytes=limits.memory_bytes,
        nano_cpus=limits.nano_cpus,
        pids_limit=max(0, task.spec.resources.pids_limit),
        read_only=container.read_only,
        volumes=_mounts(task, secrets, expand),
        tmpfs=_tmpfs(container.mounts),
        network=_network(task, bool(ports)),
        ports=ports,
        labels=task_labels(task),
        cap_add=tuple(container.cap_add),
        cap_drop=tuple(container.cap_drop),
        hostname=expand(container.hostname) or None,
        privileged=container.privileged,  # the controller checked the cluster's policy
        overlays=_tuple(task.networks, lambda n: (n.network_id, n.address)),
        extra_hosts=tuple(container.extra_hosts),
        dns_servers=tuple(container.dns_servers),
        dns_search=tuple(container.dns_search),
        init=container.init,
        tty=container.tty,
        ulimits=_tuple(container.ulimits, lambda u: (u.name, u.soft, u.hard)),
        sysctls=dict(container.sysctls) if container.sysctls else {},
        stop_signal=container.stop_signal,
        log_max_size=container.log_max_size_bytes,
        log_max_files=container.log_max_files,
        ephemeral=True,  # never started again: a failed task is replaced by a new one
    )
    check_spec(spec)
    return ContainerRequest(spec, _image_ref(container.image))


def _bridge_address(info: ContainerInfo) -> str:
    network = info.network
    return network.ip_address if network is not None and network.mode == "bridge" else ""


class TaskExecutor:
    """Implements `dockyard.agent.executor.Executor` over a `ContainerService`."""

    def __init__(
        self,
        service: ContainerService,
        secrets: SecretFiles | None = None,
        meshes_ingress: Callable[[], bool] = lambda: False,
    ) -> None:
        self.service = service
        self.secrets = secrets
        self._meshes_ingress = meshes_ingress
        self.node_hostname = ""
        """The node's name, for `{{.Node.Hostname}}` in service templates."""
        self.image_sources: dict[str, tuple[str, ...]] = {}
        """Per image, the agents of other nodes that run it (from the assignment set):
        a pull fetches the layers from them first."""
        self.registry_auths: dict[str, RegistryAuth] = {}
        """Service ID -> the credentials its tasks pull with (`--with-registry-auth`)."""

    async def prepare(self, task: Task, progress: Progress) -> None:
        name = container_name(task)
        view = await self.service.by_name(name)  # exact: no list of every container
        if view is not None:
            if view.info.labels.get(LABEL_TASK_ID) == task.id:
                return  # made before a restart
            raise ExecutorError(f"container name {name} is taken by another container")
        image = task.spec.container.image
        if not image:
            raise ExecutorError("task spec has no image")
        try:
            mounts = self.secrets.write(task) if self.secrets is not None else []
        except (SecretFileError, OSError) as exc:
            raise ExecutorError(f"secrets: {exc}") from exc
        request = task_request(task, mounts, self.node_hostname, self._meshes_ingress())
        try:
            await self._create(request, progress, self._credentials(task))
        except AlreadyExists:
            view = await self.service.inspect(name)
            if view.info.labels.get(LABEL_TASK_ID) != task.id:
                raise

    def _credentials(self, task: Task) -> dict[str, Credentials] | None:
        auth = self.registry_auths.get(task.service_id)
        return {auth.registry: Credentials(auth.username, auth.password)} if auth else None

    async def _create(
        self,
        request: ContainerRequest,
        progress: Progress,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> None:
        """Create the container; pull its image first when the node lacks it."""
        try:
            await self.service.create(request)
            return
        except ImageMissing:
            pass
        text = request.spec.image
        progress(f"pulling {text}")
        await self.service.images.pull(request.image, self.image_sources.get(text, ()), credentials)
        progress(f"pulled {text}")
        await self.service.create(request)

    async def close(self) -> None:
        """Close the service (its containers keep running)."""
        await self.service.close()

    async def start(self, task: Task) -> Started:
        view = await self.service.inspect(container_name(task))
        if view.info.state.status is ContainerStatus.CREATED:
            view = await self.service.start_container(view.info.id)  # as it is now
        return Started(view.info.id, _bridge_address(view.info))

    def wait(self, container_id: str) -> Coroutine[Any, Any, ExitInfo]:
        """The service's own wait: no coroutine of this adapter's in the chain that every
        running task holds while it waits."""
        return self.service.wait(container_id)

    async def stop(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(NotFound, FailedPrecondition):
            await self.service.stop(container_id, max(0.0, grace))

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.service.remove(container_id, force=True)

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        try:
            session = await self.service.exec(container_id, list(cmd))
        except (FailedPrecondition, NotFound, ContainerRuntimeError) as exc:
            raise ExecutorError(str(exc)) from exc
        try:
            result = await asyncio.wait_for(session.collect(), timeout)
        except TimeoutError:
            await session.kill()
            raise
        output = (result.stdout + result.stderr).decode(errors="replace")
        return result.exit_code, output[-_MAX_OUTPUT:]

    async def task_containers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for view in await self.service.list(all=True):
            task_id = view.info.labels.get(LABEL_TASK_ID)
            if task_id:
                found[task_id] = view.info.id
        return found
