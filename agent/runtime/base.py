"""The agent's container runtime seam: a leaf that runs a prepared :class:`ContainerSpec`.

A backend (``runtime/runc``, ``runtime/docker``, ``runtime/hollow``) implements
:class:`ContainerRuntime`. Its only caller is the container service
(``dockyard.agent.containers.service``), which resolves the image, attaches the network,
mounts volumes and secrets and supervises restarts; the runtime receives the result as
plain values (layer paths, a network namespace path, host paths to bind) and knows
nothing of images, networks or the API. The shapes follow the CRI container service: a
container is created from a :class:`ContainerSpec`, observed through
:class:`ContainerInfo` / :class:`ContainerState`, and its output is a stream of
:class:`LogRecord`.

Restart policies are carried in the spec but applied by the service: the runtime reports
the exit (code, OOM, time) and keeps ``restart_count``; ``start`` on an exited container
runs it again.
"""

from __future__ import annotations

import builtins
import enum
import operator
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "ContainerInfo",
    "ContainerNotFound",
    "ContainerNotRunning",
    "ContainerRuntime",
    "ContainerRuntimeError",
    "ContainerSpec",
    "ContainerState",
    "ContainerStatus",
    "ExecChunk",
    "ExecResult",
    "ExecSession",
    "ExitInfo",
    "InteractiveExec",
    "InvalidConfig",
    "LocalBridge",
    "LogRecord",
    "NameConflict",
    "NetworkEndpoint",
    "NetworkInfo",
    "NetworkMode",
    "NoInteractiveStdio",
    "PortMapping",
    "RestartPolicy",
    "RestartPolicyName",
    "SeccompMode",
    "Stats",
    "StdioSession",
    "Stream",
    "TmpfsMount",
    "VolumeMount",
    "process_args",
]

Stream = Literal["stdout", "stderr"]
NetworkMode = Literal["none", "host", "bridge"]
"""``none``: an own network namespace with only loopback; ``host``: the host's namespace;
``bridge``: an own namespace joined to the agent's bridge (``dockyard.agent.network``)."""
SeccompMode = Literal["default", "unconfined"]
"""``default``: Dockyard's seccomp profile; ``unconfined``: no seccomp filter."""


class ContainerRuntimeError(Exception):
    """Base of every error a runtime raises; the message says what failed and why."""


class ContainerNotFound(ContainerRuntimeError):
    """No container with this id (or name) exists."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"no such container: {container_id}")
        self.container_id = container_id


class NameConflict(ContainerRuntimeError):
    """Another container already uses the name."""

    def __init__(self, name: str, holder_id: str) -> None:
        super().__init__(f"container name {name!r} is already in use by container {holder_id}")
        self.name = name
        self.holder_id = holder_id


class ContainerNotRunning(ContainerRuntimeError):
    """The operation needs a running container."""

    def __init__(self, container_id: str, status: str) -> None:
        super().__init__(f"container {container_id} is not running (status {status})")
        self.container_id = container_id
        self.status = status


class InvalidConfig(ContainerRuntimeError):
    """The container config cannot be run (unknown user, bad volume, empty command...)."""


class RestartPolicyName(enum.StrEnum):
    """Docker's restart policy names."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When the caller should start an exited container again."""

    name: RestartPolicyName = RestartPolicyName.NO
    max_retries: int = 0


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """A host path bind-mounted into the container.

    ``volume`` names the named volume whose directory ``host`` is ("" for a bind mount of
    a host path); the runtime only reads ``host``.
    """

    host: Path
    container: str
    read_only: bool = False
    volume: str = ""


@dataclass(frozen=True, slots=True)
class TmpfsMount:
    """A tmpfs (memory-backed, gone with the container) at ``container``."""

    container: str
    size_bytes: int = 0  # 0: the kernel's default, half of the node's memory


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A published port: ``host_ip:host_port`` on the node reaches ``container_port``.

    ``host_ip`` ``""`` is every address of the node; ``host_port`` 0 asks the network to
    pick a free port (the bound mapping, in :class:`NetworkInfo`, has it filled in).
    """

    container_port: int
    protocol: str = "tcp"
    host_port: int = 0
    host_ip: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "container_port": self.container_port,
            "protocol": self.protocol,
            "host_port": self.host_port,
            "host_ip": self.host_ip,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PortMapping:
        """Inverse of :meth:`to_dict`."""
        return cls(
            int(data["container_port"]),
            str(data.get("protocol") or "tcp"),
            int(data.get("host_port", 0)),
            str(data.get("host_ip", "")),
        )


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """Where a container is reachable; for ``bridge``, its address and bound ports."""

    mode: str
    ip_address: str = ""
    prefix_length: int = 0
    gateway: str = ""
    bridge: str = ""
    mac_address: str = ""
    ports: tuple[PortMapping, ...] = ()


@dataclass(frozen=True, slots=True)
class LocalBridge:
    """A user-defined network of this node (``docker network create``): a Linux bridge
    and subnet of its own, isolated from the node's bridge and the other such networks.

    Attributes:
        network_id: The network's id (the Docker API's record).
        bridge: Its Linux bridge (``dyn-`` + 10 hex characters of the id).
        subnet: Its IPv4 subnet; the first address is the bridge's (the gateway).
        internal: No way out: traffic leaves only to the network's own containers.
    """

    network_id: str
    bridge: str
    subnet: str
    internal: bool = False


@dataclass(frozen=True, slots=True)
class NetworkEndpoint:
    """Where the network step put a ``bridge`` container, as plain values for the runtime.

    Attributes:
        netns_path: The network namespace the container joins.
        ip_address: Its address there (written into its ``/etc/hosts``).
        nameserver: The resolver its ``/etc/resolv.conf`` names ("" for the host's).
    """

    netns_path: str
    ip_address: str
    nameserver: str = ""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything needed to create one container.

    Attributes:
        id: Unique container id (the runtime's key; also the runc container id).
        name: Unique human name.
        image: The image reference string, kept for display.
        lower_dirs: The image's unpacked layers, top layer first (overlayfs ``lowerdir``
            order), as the image service hands them out.
        image_config: The OCI image config (``Entrypoint``, ``Cmd``, ``Env``,
            ``WorkingDir``, ``User``).
        command: Replaces the image's ``Cmd`` when given.
        entrypoint: Replaces the image's ``Entrypoint`` when given (``[]`` clears it).
        env: ``KEY=value`` entries applied over the image's env.
        workdir: Replaces the image's ``WorkingDir``.
        user: ``name``, ``uid``, ``uid:gid`` or ``name:group``; replaces the image's user.
        memory_bytes: Memory limit (swap limited to the same, so OOM kills); 0 = none.
        nano_cpus: CPU limit in 1e-9 CPUs (Docker's ``--cpus``); 0 = none.
        pids_limit: Maximum number of tasks; 0 = none.
        read_only: Mount the root filesystem read-only.
        volumes: Host bind mounts.
        tmpfs: tmpfs mounts (``noexec,nosuid,nodev`` as Docker's ``--tmpfs``).
        network: ``none`` (own namespace, loopback only), ``host`` or ``bridge``.
        ports: Published ports (``bridge`` only); bound by the service's network step.
        labels: Free-form labels.
        restart_policy: Applied by the caller, stored here.
        cap_add: Capabilities added to Docker's default set (``NET_ADMIN`` or
            ``CAP_NET_ADMIN``; ``ALL`` for every capability).
        cap_drop: Capabilities removed from it (``ALL`` drops all).
        hostname: The UTS hostname; defaults to the first 12 characters of the id.
        seccomp: ``default`` (Dockyard's profile, see ``docs/seccomp.md``) or
            ``unconfined`` (no seccomp filter).
        privileged: Docker's ``--privileged``: every capability, no seccomp, no masked or
            read-only paths, writable ``/sys``, every host device. The runtime applies it
            as asked; whether a container may be privileged is the caller's policy.
        overlays: ``(network id, address)`` of each cluster network a task's container
            joins (``bridge`` only: the bridge gives it its namespace first).
        local_network: For ``bridge``, the user-defined network whose own bridge the
            container is on instead of the node's (None: the node's bridge).
        endpoint: For ``bridge``, the namespace and address the service's network step
            attached (set by the service before ``create``); ``None`` otherwise.
        extra_hosts: Lines added to ``/etc/hosts`` (``"IP NAME"``).
        dns_servers: Nameservers that replace those of ``/etc/resolv.conf``.
        dns_search: Search domains that replace those of ``/etc/resolv.conf``.
        init: A minimal init (tini) is PID 1: it forwards signals and reaps zombies.
        ulimits: ``(name, soft, hard)`` resource limits (``nofile``, ``nproc``, ...).
        sysctls: Namespaced kernel parameters set in the container.
        stop_signal: The signal ``stop`` sends first (``""``: SIGTERM).
        log_max_size: Rotate the log at this many bytes (0: the runtime's policy).
        log_max_files: Log files kept (0: the runtime's policy).
        tty: Give the process a pseudo-terminal (Docker's ``-t``): its output is one
            stream, ``stdout``.
        open_stdin: Keep the process's stdin open for attach clients (Docker's ``-i``).
        stdin_once: Close the process's stdin when the first attach client that had it
            goes away (Docker's ``StdinOnce``, which ``run -i`` sets).
        console_size: ``(height, width)`` of the terminal from the process's start, with
            ``tty`` (Docker's ``ConsoleSize``, which its CLI sends at create so that the
            first prompt is sized before any resize); ``(0, 0)``: the runtime's default.
        ephemeral: The container runs once and is deleted after it (``--rm``,
            ``Containers.Run``, a service's task): its writable layer need not survive a
            host crash (runc: an overlay the kernel never syncs).
    """

    id: str
    name: str
    image: str
    lower_dirs: Sequence[Path]
    image_config: Mapping[str, Any] = field(default_factory=dict)
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    env: Sequence[str] = ()
    workdir: str | None = None
    user: str | None = None
    memory_bytes: int = 0
    nano_cpus: int = 0
    pids_limit: int = 0
    read_only: bool = False
    volumes: Sequence[VolumeMount] = ()
    tmpfs: Sequence[TmpfsMount] = ()
    network: NetworkMode = "none"
    ports: Sequence[PortMapping] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    hostname: str | None = None
    seccomp: SeccompMode = "default"
    privileged: bool = False
    endpoint: NetworkEndpoint | None = None
    local_network: LocalBridge | None = None
    overlays: Sequence[tuple[str, str]] = ()
    extra_hosts: Sequence[str] = ()
    dns_servers: Sequence[str] = ()
    dns_search: Sequence[str] = ()
    init: bool = False
    ulimits: Sequence[tuple[str, int, int]] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    log_max_size: int = 0
    log_max_files: int = 0
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    console_size: tuple[int, int] = (0, 0)
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.seccomp not in ("default", "unconfined"):
            raise InvalidConfig(
                f"unknown seccomp mode {self.seccomp!r} (expected 'default' or 'unconfined')"
            )
        if self.network not in ("none", "host", "bridge"):
            raise InvalidConfig(f"unknown network {self.network!r} (none, host or bridge)")
        if self.local_network is not None and self.network != "bridge":
            raise InvalidConfig(f"a user-defined network needs the bridge, not {self.network}")
        if self.ports and self.network != "bridge":
            raise InvalidConfig(f"published ports need the bridge network, not {self.network}")

    def replaced(self, **changes: Any) -> ContainerSpec:
        """`dataclasses.replace(self, **changes)` at under half its cost: the fields are
        copied slot by slot instead of through the generated `__init__` (the container
        service copies each spec it creates: a hollow fleet thousands a second). The
        same checks (`__post_init__`); an unknown field is a TypeError too."""
        if type(self) is not ContainerSpec:  # a subclass's fields: the general way
            return replace(self, **changes)
        unknown = changes.keys() - _SPEC_SETTERS.keys()
        if unknown:
            raise TypeError(f"ContainerSpec has no field {sorted(unknown)[0]!r}")
        spec = object.__new__(ContainerSpec)
        for set_field, value in zip(_SPEC_SETTERS.values(), _SPEC_VALUES(self), strict=True):
            set_field(spec, value)
        for name, value in changes.items():
            _SPEC_SETTERS[name](spec, value)
        spec.__post_init__()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        data = asdict(self)
        data["lower_dirs"] = [str(p) for p in self.lower_dirs]
        data["volumes"] = [
            {
                "host": str(v.host),
                "container": v.container,
                "read_only": v.read_only,
                "volume": v.volume,
            }
            for v in self.volumes
        ]
        data["tmpfs"] = [{"container": t.container, "size_bytes": t.size_bytes} for t in self.tmpfs]
        data["ports"] = [p.to_dict() for p in self.ports]
        data["restart_policy"] = {
            "name": self.restart_policy.name.value,
            "max_retries": self.restart_policy.max_retries,
        }
        for key in ("command", "entrypoint"):
            if data[key] is not None:
                data[key] = list(data[key])
        for key in ("env", "cap_add", "cap_drop", "extra_hosts", "dns_servers", "dns_search"):
            data[key] = list(data[key])
        data["ulimits"] = [list(u) for u in self.ulimits]
        data["console_size"] = list(self.console_size)
        data["overlays"] = [list(o) for o in self.overlays]
        data["sysctls"] = dict(self.sysctls)
        data["labels"] = dict(self.labels)
        data["image_config"] = dict(self.image_config)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerSpec:
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["lower_dirs"] = [Path(p) for p in fields.get("lower_dirs", [])]
        fields["volumes"] = [
            VolumeMount(
                Path(v["host"]),
                v["container"],
                bool(v.get("read_only", False)),
                str(v.get("volume", "")),
            )
            for v in fields.get("volumes", [])
        ]
        fields["tmpfs"] = [
            TmpfsMount(t["container"], int(t.get("size_bytes", 0)))
            for t in fields.get("tmpfs") or []
        ]
        fields["ulimits"] = [(str(n), int(s), int(h)) for n, s, h in fields.get("ulimits") or []]
        fields["overlays"] = tuple((str(n), str(a)) for n, a in fields.get("overlays") or [])
        height, width = fields.get("console_size") or (0, 0)
        fields["console_size"] = (int(height), int(width))
        fields["ports"] = [PortMapping.from_dict(p) for p in fields.get("ports") or []]
        endpoint = fields.get("endpoint")
        fields["endpoint"] = NetworkEndpoint(**endpoint) if endpoint else None
        local = fields.get("local_network")
        fields["local_network"] = LocalBridge(**local) if local else None
        policy = fields.get("restart_policy") or {}
        fields["restart_policy"] = RestartPolicy(
            RestartPolicyName(policy.get("name", "no")), int(policy.get("max_retries", 0))
        )
        return cls(**fields)


_SPEC_SETTERS: dict[str, Callable[[Any, Any], None]] = {
    f.name: getattr(ContainerSpec, f.name).__set__ for f in fields(ContainerSpec)
}
"""Each field's slot setter, in field order (they set a frozen instance's slots)."""
_SPEC_VALUES = operator.attrgetter(*_SPEC_SETTERS)
"""A spec's field values, in the same order, in one call."""


def process_args(spec: ContainerSpec) -> list[str]:
    """Entrypoint + Cmd, Docker style: a given command replaces Cmd, and an entrypoint
    override replaces the image's Entrypoint (and then drops the image's Cmd).

    Raises:
        InvalidConfig: neither the spec nor the image gives a command.
    """
    image = spec.image_config
    if spec.entrypoint is not None:
        entrypoint = list(spec.entrypoint)
        cmd = list(spec.command) if spec.command is not None else []
    else:
        entrypoint = list(image.get("Entrypoint") or [])
        cmd = list(spec.command if spec.command is not None else image.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise InvalidConfig(f"container {spec.id}: no command given and the image has none")
    return args


class ContainerStatus(enum.StrEnum):
    """Lifecycle of a container, as Docker names it."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    DEAD = "dead"


@dataclass(slots=True)
class ContainerState:
    """The observed state of a container."""

    status: ContainerStatus = ContainerStatus.CREATED
    pid: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    restart_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "status": self.status.value,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
            "restart_count": self.restart_count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContainerState:
        """Inverse of :meth:`to_dict`."""
        started, finished = data.get("started_at"), data.get("finished_at")
        return cls(
            status=ContainerStatus(data.get("status", "created")),
            pid=int(data.get("pid", 0)),
            exit_code=data.get("exit_code"),
            oom_killed=bool(data.get("oom_killed", False)),
            started_at=datetime.fromisoformat(started) if started else None,
            finished_at=datetime.fromisoformat(finished) if finished else None,
            error=str(data.get("error", "")),
            restart_count=int(data.get("restart_count", 0)),
        )


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a container's process ended."""

    exit_code: int
    oom_killed: bool
    finished_at: datetime | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A snapshot of one container: its config, state and where its log is."""

    id: str
    name: str
    image: str
    created_at: datetime
    config: ContainerSpec
    state: ContainerState
    log_path: Path | None = None
    network: NetworkInfo | None = None
    """Set for a ``bridge`` container once its network is attached."""

    @property
    def labels(self) -> Mapping[str, str]:
        """The config's labels."""
        return self.config.labels


@dataclass(frozen=True, slots=True)
class Stats:
    """One resource usage sample (cgroup counters)."""

    read_at: datetime
    cpu_usage_ns: int
    cpu_percent: float
    """Percent of one CPU used since the previous sample (200.0 = two full CPUs)."""
    memory_usage: int
    memory_limit: int
    pids: int


class LogRecord(NamedTuple):
    """One log line. ``timestamp`` is ``None`` unless timestamps were asked for."""

    stream: Stream
    timestamp: datetime | None
    data: bytes


class ExecChunk(NamedTuple):
    """A piece of an exec'd process's output."""

    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How an exec'd process ended, with the output if it was collected."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


@runtime_checkable
class ExecSession(Protocol):
    """A process started inside a running container."""

    def output(self) -> AsyncIterator[ExecChunk]:
        """Stream stdout/stderr chunks until both close (may be consumed once)."""
        ...

    async def wait(self) -> int:
        """Wait for the process; return its exit code."""
        ...

    async def collect(self) -> ExecResult:
        """Read all output, wait, and return both (instead of :meth:`output`)."""
        ...

    async def kill(self) -> None:
        """Kill the process (its caller went away or gave up waiting)."""
        ...


@runtime_checkable
class StdioSession(Protocol):
    """A connection to a process's stdio: the container's (attach) or an exec's.

    Output is pulled: nothing is read from the process while the caller does not ask,
    so a slow reader slows the process down instead of growing a buffer.
    """

    tty: bool
    """The process has a terminal: its output is one stream (``stdout``)."""

    def output(self) -> AsyncIterator[ExecChunk]:
        """Output chunks until the process's side closes (it exited)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin (ignored when its stdin is not open)."""
        ...

    async def close_stdin(self) -> None:
        """No more input: the process reads end-of-file (a ``StdinOnce`` container, an
        exec without a terminal)."""
        ...

    async def resize(self, height: int, width: int) -> None:
        """Set the terminal's size (nothing without a terminal)."""
        ...

    async def close(self) -> None:
        """Let go of the process (detach); it keeps running."""
        ...


@runtime_checkable
class InteractiveExec(StdioSession, Protocol):
    """An exec'd process with its stdin (and maybe a terminal)."""

    async def wait(self) -> int:
        """Wait for the process; return its exit code."""
        ...

    async def kill(self) -> None:
        """Kill the process (its caller went away)."""
        ...


class NoInteractiveStdio:
    """``attach``, ``resize`` and ``exec_interactive`` for a runtime without them (only
    runc has a container's stdio to connect to): each refuses, naming the runtime."""

    runtime_name = "this"

    def _refuse(self, what: str) -> ContainerRuntimeError:
        return ContainerRuntimeError(
            f"{what} is not supported by the {self.runtime_name} runtime (use runc)"
        )

    async def attach(self, container_id: str) -> StdioSession:
        raise self._refuse("attach")

    async def resize(self, container_id: str, height: int, width: int) -> None:
        raise self._refuse("resize")

    async def exec_interactive(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> InteractiveExec:
        raise self._refuse("interactive exec")


@runtime_checkable
class ContainerRuntime(Protocol):
    """A node's container engine."""

    async def create(
        self, config: ContainerSpec, record: Callable[[], None] | None = None
    ) -> ContainerInfo:
        """Prepare a container (rootfs, bundle); nothing runs yet.

        ``record``: the caller's own record of the container (blocking), written before
        the container exists, and not at all when the create is refused before it
        starts. A runtime that makes the container in a thread calls it first there
        (one thread hop for both), the others in a thread of its own.

        Raises:
            NameConflict: the name is taken.
            InvalidConfig: the config cannot run (unknown user, no command...).
        """
        ...

    async def start(self, container_id: str) -> None:
        """Start a created or exited container (an exited one counts a restart)."""
        ...

    async def wait(self, container_id: str) -> ExitInfo:
        """Wait until the container is not running and return how it exited."""
        ...

    async def stop(
        self,
        container_id: str,
        timeout: float = 10.0,
    ) -> ExitInfo | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; ``None`` if it was not running."""
        ...

    async def kill(self, container_id: str, signal: int | str = "KILL") -> None:
        """Send a signal to the container's init process."""
        ...

    async def remove(self, container_id: str, force: bool = False) -> None:
        """Delete the container and its writable layer; ``force`` kills it first."""
        ...

    async def list(self, all: bool = False) -> builtins.list[ContainerInfo]:
        """Running containers, or every container with ``all``."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """One container by id or name."""
        ...

    def logs(
        self,
        container_id: str,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """The container's output lines; ``follow`` keeps reading until it exits."""
        ...

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> ExecSession:
        """Start another process in a running container."""
        ...

    async def attach(self, container_id: str) -> StdioSession:
        """Connect to the container's stdio.

        A container that is not running yet is connected when it starts, before its
        process runs, so no output is missed (``docker run -it`` attaches, then starts).
        """
        ...

    async def resize(self, container_id: str, height: int, width: int) -> None:
        """Set the size of a running container's terminal (nothing without one)."""
        ...

    async def exec_interactive(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> InteractiveExec:
        """Start another process in a running container, with its stdin open."""
        ...

    async def stats(self, container_id: str) -> Stats:
        """Current resource usage of a running container."""
        ...

    async def recover(self) -> builtins.list[ContainerInfo]:
        """Find every container again after an agent restart; call once at start."""
        ...

    async def rename(self, container_id: str, name: str) -> None:
        """Give the container another name (``docker rename``).

        Raises:
            NameConflict: another container has the name.
        """
        ...

    async def set_endpoint(self, container_id: str, endpoint: NetworkEndpoint) -> None:
        """The network step moved the container (a reboot took its namespace): rewrite
        what the runtime derived from its endpoint (``/etc/hosts``)."""
        ...

    async def close(self) -> None:
        """Stop watching; the containers keep running (live restore)."""
        ...
