"""`DockerRuntime`: the Docker engine already running on a host, as a `ContainerRuntime`.

For hosts that run dockerd anyway (`dockyard-agent run --runtime docker`). A leaf like
the runc runtime: it turns a `ContainerSpec` into the engine's create body and reads the
engine's records back. The engine keeps the images (its own registry settings and
credentials) and the networking (its own bridge publishes the ports): the container
service pairs this runtime with `EngineImages` and `EngineNetwork`. The engine's id is
the container's id. The engine is shared with the host's own containers, so the runtime
only sees containers carrying `owner_label`. Talks to the engine's API over its socket
with aiodocker (aio-libs).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker

from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExecChunk,
    ExecResult,
    ExitInfo,
    InvalidConfig,
    LogRecord,
    NameConflict,
    NetworkEndpoint,
    NetworkInfo,
    NetworkMode,
    NoInteractiveStdio,
    PortMapping,
    Stats,
    Stream,
    VolumeMount,
)

__all__ = ["DEFAULT_HOST", "DockerExecSession", "DockerRuntime", "engine_body", "engine_time"]

DEFAULT_HOST = "unix:///var/run/docker.sock"
_STREAMS = {1: "stdout", 2: "stderr"}


def _mount(volume: VolumeMount) -> dict[str, Any]:
    if volume.volume:  # the engine makes a missing named volume
        return {
            "Type": "volume",
            "Source": volume.volume,
            "Target": volume.container,
            "ReadOnly": volume.read_only,
        }
    return {
        "Type": "bind",
        "Source": str(volume.host),
        "Target": volume.container,
        "ReadOnly": volume.read_only,
    }


def _ports(ports: Sequence[PortMapping]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        key = f"{port.container_port}/{port.protocol}"
        exposed[key] = {}
        if port.host_port:
            bindings.setdefault(key, []).append(
                {"HostIp": port.host_ip, "HostPort": str(port.host_port)}
            )
    return exposed, bindings


def _host_config(spec: ContainerSpec) -> dict[str, Any]:
    host: dict[str, Any] = {
        "NetworkMode": spec.network,
        "RestartPolicy": {"Name": "no"},  # the container service applies restart policies
        "ReadonlyRootfs": spec.read_only,
        "CapAdd": list(spec.cap_add) or None,
        "CapDrop": list(spec.cap_drop) or None,
        "Privileged": spec.privileged,
        "Init": False,
    }
    if spec.memory_bytes:
        host["Memory"] = spec.memory_bytes
    if spec.nano_cpus:
        host["NanoCpus"] = spec.nano_cpus
    if spec.pids_limit:
        host["PidsLimit"] = spec.pids_limit
    if spec.seccomp == "unconfined":
        host["SecurityOpt"] = ["seccomp=unconfined"]
    mounts = [_mount(v) for v in spec.volumes] + [
        {
            "Type": "tmpfs",
            "Target": t.container,
            "TmpfsOptions": {"SizeBytes": t.size_bytes} if t.size_bytes else {},
        }
        for t in spec.tmpfs
    ]
    if mounts:
        host["Mounts"] = mounts
    return host


def engine_body(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's create body for a spec (`spec.image` as the engine will pull it)."""
    host = _host_config(spec)
    exposed, bindings = _ports(spec.ports)
    if bindings:
        host["PortBindings"] = bindings
    body: dict[str, Any] = {
        "Image": spec.image,
        "Env": list(spec.env),
        "Labels": dict(spec.labels),
        "HostConfig": host,
    }
    optional = {
        "Cmd": list(spec.command or ()),  # JSON arrays, whatever sequence the spec holds
        "Entrypoint": list(spec.entrypoint or ()),
        "WorkingDir": spec.workdir,
        "User": spec.user,
        "Hostname": spec.hostname,
    }
    body.update({key: value for key, value in optional.items() if value})
    if exposed:
        body["ExposedPorts"] = exposed
    _service_extras(spec, body, host)
    return body


def _service_extras(spec: ContainerSpec, body: dict[str, Any], host: dict[str, Any]) -> None:
    """--host, --dns, --dns-search, --init, --tty, --ulimit, --sysctl, --stop-signal and
    the log rotation, in the engine's own fields."""
    if spec.tty:
        body["Tty"] = True
        if any(spec.console_size):
            host["ConsoleSize"] = list(spec.console_size)
    if spec.init:
        host["Init"] = True
    if spec.extra_hosts:  # "IP NAME" -> the engine's "NAME:IP"
        host["ExtraHosts"] = [f"{line.split()[1]}:{line.split()[0]}" for line in spec.extra_hosts]
    if spec.dns_servers:
        host["Dns"] = list(spec.dns_servers)
    if spec.dns_search:
        host["DnsSearch"] = list(spec.dns_search)
    if spec.ulimits:
        host["Ulimits"] = [{"Name": n, "Soft": s, "Hard": h} for n, s, h in spec.ulimits]
    if spec.sysctls:
        host["Sysctls"] = dict(spec.sysctls)
    if spec.log_max_size or spec.log_max_files:
        options = {"max-size": str(spec.log_max_size)} if spec.log_max_size else {}
        if spec.log_max_files:
            options["max-file"] = str(spec.log_max_files)
        host["LogConfig"] = {"Type": "json-file", "Config": options}
    if spec.stop_signal:
        body["StopSignal"] = spec.stop_signal


def engine_time(text: str | None) -> datetime | None:
    """A time as the engine writes it (RFC 3339 with nanoseconds); None for its zero time."""
    if not text or text.startswith("0001-"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00")
    return None


_STATUS = {
    "created": ContainerStatus.CREATED,
    "running": ContainerStatus.RUNNING,
    "paused": ContainerStatus.RUNNING,
    "restarting": ContainerStatus.RUNNING,
    "exited": ContainerStatus.EXITED,
    "removing": ContainerStatus.EXITED,
    "dead": ContainerStatus.DEAD,
}


def _state(state: Mapping[str, Any], restarts: int) -> ContainerState:
    status = _STATUS.get(str(state.get("Status", "")), ContainerStatus.DEAD)
    exited = status in (ContainerStatus.EXITED, ContainerStatus.DEAD)
    return ContainerState(
        status=status,
        pid=int(state.get("Pid") or 0),
        exit_code=int(state.get("ExitCode") or 0) if exited else None,
        oom_killed=bool(state.get("OOMKilled")),
        started_at=engine_time(state.get("StartedAt")),
        finished_at=engine_time(state.get("FinishedAt")),
        error=str(state.get("Error") or ""),
        restart_count=restarts,
    )


def _spec(found: Mapping[str, Any]) -> ContainerSpec:
    """What the engine's record says of the container, as a spec."""
    config, host = found.get("Config") or {}, found.get("HostConfig") or {}
    mode = str(host.get("NetworkMode") or "none")
    network: NetworkMode = mode if mode in ("none", "host") else "bridge"  # type: ignore[assignment]
    return ContainerSpec(
        id=str(found["Id"]),
        name=str(found.get("Name", "")).removeprefix("/"),
        image=str(config.get("Image", "")),
        lower_dirs=(),
        command=config.get("Cmd"),
        entrypoint=config.get("Entrypoint"),
        env=list(config.get("Env") or ()),
        workdir=config.get("WorkingDir") or None,
        user=config.get("User") or None,
        memory_bytes=int(host.get("Memory") or 0),
        nano_cpus=int(host.get("NanoCpus") or 0),
        pids_limit=max(0, int(host.get("PidsLimit") or 0)),
        read_only=bool(host.get("ReadonlyRootfs")),
        network=network,
        labels=dict(config.get("Labels") or {}),
        cap_add=list(host.get("CapAdd") or ()),
        cap_drop=list(host.get("CapDrop") or ()),
        hostname=config.get("Hostname") or None,
        privileged=bool(host.get("Privileged")),
    )


def _info(found: Mapping[str, Any]) -> ContainerInfo:
    spec = _spec(found)
    created = engine_time(found.get("Created")) or datetime.now(UTC)
    log_path = found.get("LogPath")
    return ContainerInfo(
        spec.id,
        spec.name,
        spec.image,
        created,
        spec,
        _state(found.get("State") or {}, int(found.get("RestartCount") or 0)),
        Path(log_path) if log_path else None,
        NetworkInfo(mode=spec.network),
    )


def _exit(state: ContainerState) -> ExitInfo:
    code = state.exit_code if state.exit_code is not None else -1
    return ExitInfo(code, state.oom_killed, state.finished_at, state.error)


class DockerExecSession:
    """A process started in a container by the engine (implements `ExecSession`)."""

    def __init__(self, execution: Any) -> None:
        self._execution = execution
        self._stream: Any = None

    async def output(self) -> AsyncIterator[ExecChunk]:
        async with self._execution.start(detach=False) as stream:
            self._stream = stream
            while (message := await stream.read_out()) is not None:
                yield ExecChunk(_STREAMS.get(message.stream, "stdout"), message.data)  # type: ignore[arg-type]

    async def wait(self) -> int:
        inspected = await self._execution.inspect()
        return int(inspected.get("ExitCode") or 0)

    async def collect(self) -> ExecResult:
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        async for chunk in self.output():
            out[chunk.stream].append(chunk.data)
        return ExecResult(await self.wait(), b"".join(out["stdout"]), b"".join(out["stderr"]))

    async def kill(self) -> None:
        """The engine has no call that kills an exec'd process: stop reading its output."""
        if self._stream is not None:
            await self._stream.close()


class DockerRuntime(NoInteractiveStdio):
    """The Docker engine's containers that carry `owner_label` (implements
    `ContainerRuntime`).

    Args:
        host: The engine's API address (`unix:///var/run/docker.sock`, `tcp://...`).
        owner_label: The label of the containers this runtime owns.
    """

    runtime_name = "docker"

    def __init__(self, host: str = DEFAULT_HOST, owner_label: str = "dockyard.task.id") -> None:
        self.host = host
        self.owner_label = owner_label
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        """The engine's API client (made on first use)."""
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.host)
        return self._docker

    async def version(self) -> str:
        """The engine's version; ContainerRuntimeError when it does not answer."""
        try:
            info = await self.docker.version()
        except (aiodocker.DockerError, OSError) as exc:
            raise ContainerRuntimeError(
                f"the Docker engine at {self.host} does not answer: {exc}"
            ) from exc
        return str(info.get("Version", ""))

    async def has_image(self, image: str) -> bool:
        """Whether the engine has `image` (for `EngineImages`)."""
        try:
            await self.docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise ContainerRuntimeError(
                f"the engine failed to inspect {image}: {exc.message}"
            ) from exc
        return True

    async def pull(self, image: str) -> None:
        """Have the engine pull `image` (for `EngineImages`)."""
        try:
            await self.docker.images.pull(image)
        except aiodocker.DockerError as exc:
            raise ContainerRuntimeError(f"pull of {image} failed: {exc.message}") from exc

    async def _found(self, ref: str) -> dict[str, Any]:
        try:
            container = await self.docker.containers.get(ref)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerNotFound(ref) from None
            raise ContainerRuntimeError(
                f"the engine failed to inspect {ref}: {exc.message}"
            ) from exc
        found = dict(container._container)
        if self.owner_label not in ((found.get("Config") or {}).get("Labels") or {}):
            raise ContainerNotFound(ref)  # the host's own container: not ours
        return found

    async def create(
        self, config: ContainerSpec, record: Callable[[], None] | None = None
    ) -> ContainerInfo:
        if self.owner_label not in config.labels:
            raise InvalidConfig(f"container {config.name}: no {self.owner_label} label")
        if record is not None:
            await asyncio.to_thread(record)
        try:
            made = await self.docker.containers.create(engine_body(config), name=config.name)
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                holder = await self.docker.containers.get(config.name)
                raise NameConflict(config.name, holder.id) from exc
            raise InvalidConfig(f"the engine refused the container: {exc.message}") from exc
        return _info(await self._found(made.id))

    async def start(self, container_id: str) -> None:
        found = await self._found(container_id)
        if found["State"].get("Status") == "running":
            return
        try:
            await self.docker.containers.container(found["Id"]).start()
        except aiodocker.DockerError as exc:
            raise ContainerRuntimeError(f"the engine failed to start it: {exc.message}") from exc

    async def wait(self, container_id: str) -> ExitInfo:
        found = await self._found(container_id)
        try:
            await self.docker.containers.container(found["Id"]).wait()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise ContainerRuntimeError(
                    f"waiting for {container_id[:12]} failed: {exc.message}"
                ) from exc
        try:
            return _exit(_info(await self._found(found["Id"])).state)
        except ContainerNotFound:
            return ExitInfo(137, False, None, "the container was removed")

    async def stop(self, container_id: str, timeout: float = 10.0) -> ExitInfo | None:
        found = await self._found(container_id)
        if found["State"].get("Status") != "running":
            return None
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.containers.container(found["Id"]).stop(t=max(0, round(timeout)))
        return await self.wait(found["Id"])

    async def kill(self, container_id: str, signal: int | str = "KILL") -> None:
        found = await self._found(container_id)
        if found["State"].get("Status") != "running":
            raise ContainerNotRunning(found["Id"], str(found["State"].get("Status")))
        await self.docker.containers.container(found["Id"]).kill(signal=str(signal))

    async def remove(self, container_id: str, force: bool = False) -> None:
        found = await self._found(container_id)
        try:
            await self.docker.containers.container(found["Id"]).delete(force=force)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerNotFound(container_id) from None
            if exc.status != 409:  # 409: already being removed
                raise ContainerRuntimeError(
                    f"removing {container_id[:12]} failed: {exc.message}"
                ) from exc

    async def list(self, all: bool = False) -> builtins.list[ContainerInfo]:
        containers = await self.docker.containers.list(
            all=all, filters={"label": [self.owner_label]}
        )
        infos = []
        for container in containers:
            with contextlib.suppress(ContainerNotFound):  # removed since the listing
                infos.append(_info(await self._found(container.id)))
        return infos

    async def inspect(self, container_id: str) -> ContainerInfo:
        return _info(await self._found(container_id))

    async def logs(
        self,
        container_id: str,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """Each stream in turn (the engine sends them apart); the Containers API's Logs
        of a docker agent reads the engine itself (`containers/docker_logs.py`)."""
        found = await self._found(container_id)
        container = self.docker.containers.container(found["Id"])
        params: dict[str, Any] = {"timestamps": True, "tail": str(tail) if tail else "all"}
        if since is not None:
            params["since"] = int(since.timestamp())
        streams: tuple[Stream, Stream] = ("stdout", "stderr")
        for stream in streams:
            chunks = await container.log(
                stdout=stream == "stdout", stderr=stream == "stderr", **params
            )
            for text in (t for chunk in chunks for t in chunk.splitlines() if t):
                stamp, _, rest = text.partition(" ")
                yield LogRecord(stream, engine_time(stamp) if timestamps else None, rest.encode())

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> DockerExecSession:
        found = await self._found(container_id)
        container = self.docker.containers.container(found["Id"])
        try:
            execution = await container.exec(
                list(cmd),
                stdout=True,
                stderr=True,
                environment=list(env) or None,
                workdir=workdir,
                user=user or "",
                tty=tty,
            )
        except aiodocker.DockerError as exc:
            raise ContainerRuntimeError(
                f"exec in {container_id[:12]} failed: {exc.message}"
            ) from exc
        return DockerExecSession(execution)

    async def stats(self, container_id: str) -> Stats:
        found = await self._found(container_id)
        sample = await self.docker.containers.container(found["Id"]).stats(stream=False)
        raw = sample[0] if isinstance(sample, list) else sample
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        used = int((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
        delta = used - int((pre.get("cpu_usage") or {}).get("total_usage") or 0)
        system = int(cpu.get("system_cpu_usage") or 0) - int(pre.get("system_cpu_usage") or 0)
        cpus = int(cpu.get("online_cpus") or 1)
        memory = raw.get("memory_stats") or {}
        return Stats(
            datetime.now(UTC),
            used,
            delta / system * cpus * 100.0 if system > 0 else 0.0,
            int(memory.get("usage") or 0),
            int(memory.get("limit") or 0),
            int((raw.get("pids_stats") or {}).get("current") or 0),
        )

    async def recover(self) -> builtins.list[ContainerInfo]:
        """The engine keeps its containers: they are simply listed."""
        return await self.list(all=True)

    async def rename(self, container_id: str, name: str) -> None:
        found = await self._found(container_id)
        try:
            await self.docker.containers.container(found["Id"]).rename(name)
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                holder = await self.docker.containers.get(name)
                raise NameConflict(name, holder.id) from exc
            raise ContainerRuntimeError(f"the engine failed to rename: {exc.message}") from exc

    async def set_endpoint(self, container_id: str, endpoint: NetworkEndpoint) -> None:
        """The engine's networking is its own: nothing to rewrite."""

    async def close(self) -> None:
        """Close the API client (the engine keeps its containers)."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
