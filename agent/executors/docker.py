"""`DockerExecutor`: tasks as containers of the Docker engine already running on a host.

For hosts that run dockerd anyway (`dockyard-agent run --runtime docker`): the engine
pulls the images (with its own registry settings and credentials), runs and restarts
nothing by itself (restart policy `no`: the controller replaces failed tasks), and
keeps the containers, which carry the task's labels so an agent restart loses nothing.
Talks to the engine's API over its socket with aiodocker (aio-libs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiodocker
import structlog

from dockyard.agent.executor import (
    LABEL_TASK_ID,
    ExecutorError,
    Progress,
    container_name,
    task_labels,
)
from dockyard.agent.runtime.base import ExitInfo
from dockyard.agent.secret_files import SecretFileError, SecretFiles, SecretMount
from dockyard.common.reference import parse_reference
from dockyard.v1.workloads_pb2 import Task

__all__ = ["DockerExecutor", "container_config"]

log = structlog.get_logger(__name__)

DEFAULT_HOST = "unix:///var/run/docker.sock"
_MAX_OUTPUT = 4096


def _pull_reference(image: str) -> str:
    """What to ask the engine for: `name@digest` when the spec pins one, else the image."""
    ref = parse_reference(image)
    return f"{ref.name}@{ref.digest}" if ref.digest else str(ref)


def _port_bindings(task: Task) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in task.spec.ports:
        key = f"{port.target_port}/{port.protocol or 'tcp'}"
        exposed[key] = {}
        if port.published_port:
            bindings.setdefault(key, []).append({"HostPort": str(port.published_port)})
    return exposed, bindings


def _mount(mount: Any) -> dict[str, Any]:
    if mount.type == "tmpfs":
        options = {"SizeBytes": mount.tmpfs_size_bytes} if mount.tmpfs_size_bytes else {}
        return {"Type": "tmpfs", "Target": mount.target, "TmpfsOptions": options}
    return {"Type": mount.type, "Source": mount.source, "Target": mount.target,
            "ReadOnly": mount.read_only}  # bind or volume (the engine makes a missing one)


def container_config(task: Task, secrets: Sequence[SecretMount] = ()) -> dict[str, Any]:
    """The engine's create body for a task (the same fields as the runc path); `secrets`
    are the task's secret files, bind-mounted read-only."""
    spec = task.spec.container
    limits = task.spec.resources.limits
    exposed, bindings = _port_bindings(task)
    network = spec.network or ("bridge" if bindings else "none")
    host: dict[str, Any] = {
        "NetworkMode": network,
        "RestartPolicy": {"Name": "no"},
        "ReadonlyRootfs": spec.read_only,
        "CapAdd": list(spec.cap_add) or None,
        "CapDrop": list(spec.cap_drop) or None,
        "Privileged": spec.privileged,  # the controller checked the cluster's policy
        "Init": False,
    }
    if limits.memory_bytes:
        host["Memory"] = limits.memory_bytes
    if limits.nano_cpus:
        host["NanoCpus"] = limits.nano_cpus
    if task.spec.resources.pids_limit:
        host["PidsLimit"] = task.spec.resources.pids_limit
    if bindings:
        host["PortBindings"] = bindings
    mounts = [_mount(m) for m in spec.mounts] + [
        {"Type": "bind", "Source": s.host_path, "Target": s.container_path, "ReadOnly": True}
        for s in secrets
    ]
    if mounts:
        host["Mounts"] = mounts
    config: dict[str, Any] = {
        "Image": _pull_reference(spec.image),
        "Env": list(spec.env),
        "Labels": task_labels(task),
        "HostConfig": host,
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.workdir:
        config["WorkingDir"] = spec.workdir
    if spec.user:
        config["User"] = spec.user
    if spec.hostname:
        config["Hostname"] = spec.hostname
    if exposed:
        config["ExposedPorts"] = exposed
    return config


def _finished_at(text: str) -> datetime | None:
    if not text or text.startswith("0001-"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00")
    return None


class DockerExecutor:
    """Implements `dockyard.agent.executor.Executor` over a Docker engine.

    Args:
        host: The engine's API address (`unix:///var/run/docker.sock`, `tcp://...`).
    """

    def __init__(self, host: str = DEFAULT_HOST, secrets: SecretFiles | None = None) -> None:
        self.host = host
        self.secrets = secrets
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.host)
        return self._docker

    async def version(self) -> str:
        """The engine's version; ExecutorError when it does not answer."""
        try:
            info = await self.docker.version()
        except (aiodocker.DockerError, OSError) as exc:
            raise ExecutorError(f"the Docker engine at {self.host} does not answer: {exc}") from exc
        return str(info.get("Version", ""))

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def prepare(self, task: Task, progress: Progress) -> None:
        name = container_name(task)
        existing = await self._find(name)
        if existing is not None:
            if existing["Config"]["Labels"].get(LABEL_TASK_ID) == task.id:
                return  # made before a restart
            raise ExecutorError(f"container name {name} is taken by another container")
        try:
            mounts = self.secrets.write(task) if self.secrets is not None else []
        except (SecretFileError, OSError) as exc:
            raise ExecutorError(f"secrets: {exc}") from exc
        config = container_config(task, mounts)
        await self._ensure_image(config["Image"], progress)
        try:
            await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 409:  # made by a concurrent prepare of the same task
                return
            raise ExecutorError(f"the engine refused the container: {exc.message}") from exc

    async def _ensure_image(self, image: str, progress: Progress) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.images.inspect(image)
            return
        progress(f"pulling {image}")
        try:
            await self.docker.images.pull(image)
        except aiodocker.DockerError as exc:
            raise ExecutorError(f"pull of {image} failed: {exc.message}") from exc
        progress(f"pulled {image}")

    async def _find(self, ref: str) -> dict[str, Any] | None:
        try:
            container = await self.docker.containers.get(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise ExecutorError(f"the engine failed to inspect {ref}: {exc.message}") from exc
        return dict(container._container)

    async def start(self, task: Task) -> str:
        found = await self._find(container_name(task))
        if found is None:
            raise ExecutorError(f"container {container_name(task)} is gone")
        if found["State"].get("Status") == "created":  # never started: not a restart
            try:
                await self.docker.containers.container(found["Id"]).start()
            except aiodocker.DockerError as exc:
                raise ExecutorError(f"the engine failed to start it: {exc.message}") from exc
        return str(found["Id"])

    async def wait(self, container_id: str) -> ExitInfo:
        container = self.docker.containers.container(container_id)
        try:
            await container.wait()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise ExecutorError(f"waiting for {container_id[:12]} failed: {exc.message}") \
                    from exc
        found = await self._find(container_id)
        if found is None:
            return ExitInfo(exit_code=137, oom_killed=False, finished_at=None,
                            error="the container was removed")  # fmt: skip
        state = found["State"]
        return ExitInfo(exit_code=int(state.get("ExitCode", 0)),
                        oom_killed=bool(state.get("OOMKilled")),
                        finished_at=_finished_at(state.get("FinishedAt", "")),
                        error=str(state.get("Error", "")))  # fmt: skip

    async def stop(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(container_id).stop(t=max(0, round(grace)))

    async def remove(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone, or already being removed
                raise ExecutorError(f"removing {container_id[:12]} failed: {exc.message}") \
                    from exc

    async def exec(self, container_id: str, cmd: Sequence[str], timeout: float) -> tuple[int, str]:
        container = self.docker.containers.container(container_id)
        try:
            execution = await container.exec(list(cmd), stdout=True, stderr=True)
            output = await asyncio.wait_for(self._collect(execution), timeout)
            inspected = await execution.inspect()
        except aiodocker.DockerError as exc:
            raise ExecutorError(f"exec in {container_id[:12]} failed: {exc.message}") from exc
        return int(inspected.get("ExitCode") or 0), output[-_MAX_OUTPUT:]

    @staticmethod
    async def _collect(execution: Any) -> str:
        chunks: list[bytes] = []
        async with execution.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                chunks.append(message.data)
        return b"".join(chunks).decode(errors="replace")

    async def address(self, container_id: str) -> str:
        """None: the engine's own bridge is not the cluster network (it is not routed)."""
        return ""

    async def task_containers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        containers = await self.docker.containers.list(
            all=True, filters={"label": [LABEL_TASK_ID]})
        for container in containers:
            task_id = (container._container.get("Labels") or {}).get(LABEL_TASK_ID)
            if task_id:
                found[task_id] = container.id
        return found
