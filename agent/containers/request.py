"""Parse a local API create request into a :class:`ContainerRequest` and check a spec.

Every way in (the gRPC servicer, the task executor) builds a typed
:class:`~dockyard.agent.runtime.base.ContainerSpec`; :func:`check_spec` is the one check
of it, and every error names the field (``env[2]``, ``ports[0].host_port``).
"""

from __future__ import annotations

import ipaddress
import signal as signals
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.names import NAME_RE
from dockyard.agent.containers.volumes import check_volume_name
from dockyard.agent.images.errors import InvalidReference
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.runtime.base import (
    ContainerSpec,
    InvalidConfig,
    NetworkMode,
    PortMapping,
    RestartPolicy,
    RestartPolicyName,
    TmpfsMount,
    VolumeMount,
)
from dockyard.agent.runtime.runc.attach import check_size
from dockyard.common.privilege import parse_capability
from dockyard.common.validation import MAX_MOUNTS, MAX_TMPFS_BYTES
from dockyard.v1.containers_pb2 import CreateContainerRequest

__all__ = [
    "MIN_MEMORY",
    "ContainerRequest",
    "check_spec",
    "check_user",
    "parse_create",
    "parse_image_ref",
    "parse_restart_policy",
    "parse_signal",
]

MIN_MEMORY = 6 * 1024 * 1024
"""Docker's smallest memory limit (6 MiB)."""
MAX_PORTS = 256
"""Most published ports of one container."""


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """A container to create, parsed once at the edge.

    Attributes:
        spec: The container without its id and image layers (the service fills them);
            a named volume's mount has ``volume`` set and its directory not yet known.
        image: The parsed image reference (``spec.image`` is the text, for display).
        auto_remove: ``--rm``: removed once it exits.
        removed_by_call: A `Containers.Run` call removes it; should the agent die first,
            the restarted agent removes it once it has exited (``--rm`` from then on).
    """

    spec: ContainerSpec
    image: Reference
    auto_remove: bool = False
    removed_by_call: bool = False


def parse_image_ref(field: str, text: str) -> Reference:
    """Parse an image reference or fail with INVALID_ARGUMENT naming `field`."""
    if not text:
        raise InvalidArgument(field, "an image reference is required")
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        raise InvalidArgument(field, str(exc)) from exc


def parse_restart_policy(name: str, max_retries: int) -> RestartPolicy:
    """`no`, `always`, `unless-stopped`, `on-failure` (or `on-failure:N`) to a policy."""
    field = "restart_policy"
    text = name.strip() or "no"
    if text.startswith("on-failure:"):
        text, _, count = text.partition(":")
        try:
            max_retries = int(count)
        except ValueError:
            raise InvalidArgument(field, f"bad maximum retry count in {name!r}") from None
    try:
        policy_name = RestartPolicyName(text)
    except ValueError:
        choices = ", ".join(p.value for p in RestartPolicyName)
        raise InvalidArgument(
            field, f"unknown restart policy {name!r} (one of {choices})"
        ) from None
    if max_retries < 0:
        raise InvalidArgument(f"{field}.max_retries", f"must not be negative, got {max_retries}")
    if max_retries and policy_name is not RestartPolicyName.ON_FAILURE:
        raise InvalidArgument(
            f"{field}.max_retries", f"only on-failure takes a retry count, not {policy_name}"
        )
    return RestartPolicy(policy_name, max_retries)


def check_user(field: str, user: str) -> None:
    """`name`, `uid`, `name:group` or `uid:gid`, where a number is ASCII digits."""
    for part in user.strip().split(":", 1):
        if part.isdigit() and not part.isascii():  # "¹".isdigit(), but int() refuses it
            raise InvalidArgument(field, f"invalid user {user!r}: a uid or gid is digits 0-9")


def parse_signal(text: str) -> int:
    """`KILL`, `SIGKILL`, `kill` or `9` to a signal number."""
    value = text.strip() or "KILL"
    if value.isascii() and value.isdigit():  # "¹".isdigit(), but int() refuses it
        number = int(value)
        if number not in {int(s) for s in signals.Signals}:
            raise InvalidArgument("signal", f"unknown signal number {number}")
        return number
    upper = value.upper()
    name = upper if upper.startswith("SIG") else f"SIG{upper}"
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument("signal", f"unknown signal {text!r}") from None


def _tmpfs_of(request: CreateContainerRequest) -> list[TmpfsMount]:
    return [TmpfsMount(t.container_path, t.size_bytes) for t in request.tmpfs]


def _volumes_of(request: CreateContainerRequest) -> list[VolumeMount]:
    """Bind mounts of host paths and named volumes (whose directory the service finds)."""
    mounts = []
    for index, volume in enumerate(request.volumes):
        if volume.volume and volume.host_path:
            raise InvalidArgument(f"volumes[{index}].host_path", "a named volume has no host path")
        # a named volume's directory is not known yet: "/" until the service finds it
        host = Path("/") if volume.volume else Path(volume.host_path)
        mounts.append(VolumeMount(host, volume.container_path, volume.read_only, volume.volume))
    return mounts


def _host_ip(field: str, text: str) -> str:
    """``""`` (every address) or one IPv4 address of the node."""
    text = text.strip()
    if text in ("", "0.0.0.0"):
        return ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(field, f"{text!r} is not an IP address") from None
    if address.version != 4:
        raise InvalidArgument(field, f"{text}: only IPv4 addresses can be published on")
    if address.is_multicast:
        raise InvalidArgument(field, f"{text} is a multicast address")
    return str(address)


def _ports_of(request: CreateContainerRequest) -> list[PortMapping]:
    """The request's published ports, normalized (protocol ``tcp`` by default, ``0.0.0.0``
    as ``""``); :func:`check_spec` checks their numbers."""
    if len(request.ports) > MAX_PORTS:
        raise InvalidArgument(
            "ports", f"at most {MAX_PORTS} published ports, got {len(request.ports)}"
        )
    mappings = []
    for index, port in enumerate(request.ports):
        field = f"ports[{index}]"
        _check_port_numbers(field, port.container_port, port.host_port)
        mappings.append(
            PortMapping(
                port.container_port,
                port.protocol.strip().lower() or "tcp",
                port.host_port,
                _host_ip(f"{field}.host_ip", port.host_ip),
            )
        )
    return mappings


def _check_port_numbers(field: str, container_port: int, host_port: int) -> None:
    if not 1 <= container_port <= 65535:
        raise InvalidArgument(f"{field}.container_port", f"{container_port} is not in 1-65535")
    if not 0 <= host_port <= 65535:
        raise InvalidArgument(
            f"{field}.host_port", f"{host_port} is not in 1-65535 (or 0: a free port)"
        )


def _check_ports(ports: Sequence[PortMapping]) -> None:
    """Numbers in range, tcp or udp, and no host port published twice."""
    if len(ports) > MAX_PORTS:
        raise InvalidArgument("ports", f"at most {MAX_PORTS} published ports, got {len(ports)}")
    for index, mapping in enumerate(ports):
        field = f"ports[{index}]"
        _check_port_numbers(field, mapping.container_port, mapping.host_port)
        if mapping.protocol not in ("tcp", "udp"):
            raise InvalidArgument(
                f"{field}.protocol", f"unknown protocol {mapping.protocol!r} (tcp or udp)"
            )
        for other_index, other in enumerate(ports[:index]):
            if (
                mapping.host_port
                and mapping.host_port == other.host_port
                and mapping.protocol == other.protocol
                and (not mapping.host_ip or not other.host_ip or mapping.host_ip == other.host_ip)
            ):
                raise InvalidArgument(
                    f"{field}.host_port",
                    f"{mapping.host_port}/"
                    f"{mapping.protocol} is already published by "
                    f"ports[{other_index}]",
                )


def _check_capabilities(field: str, names: Sequence[str]) -> None:
    for index, name in enumerate(names):
        try:
            parse_capability(name)
        except ValueError as exc:
            raise InvalidArgument(f"{field}[{index}]", str(exc)) from None


def _check_mounts(spec: ContainerSpec) -> None:
    for index, volume in enumerate(spec.volumes):
        field = f"volumes[{index}]"
        if volume.volume:
            check_volume_name(f"{field}.volume", volume.volume)
        elif not volume.host.is_absolute():
            raise InvalidArgument(f"{field}.host_path", f"not absolute: {str(volume.host)!r}")
        if not volume.container.startswith("/"):
            raise InvalidArgument(f"{field}.container_path", f"not absolute: {volume.container!r}")
    for index, tmpfs in enumerate(spec.tmpfs):
        field = f"tmpfs[{index}]"
        if not tmpfs.container.startswith("/"):
            raise InvalidArgument(
                f"{field}.container_path", f"not absolute: {tmpfs.container[:200]!r}"
            )
        if not 0 <= tmpfs.size_bytes <= MAX_TMPFS_BYTES:
            raise InvalidArgument(
                f"{field}.size_bytes", f"must be 0 (default) to 1 TiB, got {tmpfs.size_bytes}"
            )
    targets = [v.container for v in spec.volumes] + [t.container for t in spec.tmpfs]
    if len(targets) > MAX_MOUNTS:
        raise InvalidArgument("volumes", f"at most {MAX_MOUNTS} mounts, got {len(targets)}")
    seen: set[str] = set()
    for target in targets:
        normal = target.rstrip("/") or "/"
        if normal in seen:
            raise InvalidArgument("volumes", f"two mounts at {target[:200]!r}")
        seen.add(normal)


def _check_process(spec: ContainerSpec) -> None:
    for index, entry in enumerate(spec.env):
        key = entry.partition("=")[0]
        if "=" not in entry or not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"env[{index}]", f"expected KEY=VALUE, got {entry!r}")
    if spec.workdir and not spec.workdir.startswith("/"):
        raise InvalidArgument("workdir", f"must be an absolute path, got {spec.workdir!r}")
    check_user("user", spec.user or "")
    if spec.hostname and not NAME_RE.match(spec.hostname):
        raise InvalidArgument("hostname", f"invalid hostname {spec.hostname!r}")
    _check_capabilities("cap_add", spec.cap_add)
    _check_capabilities("cap_drop", spec.cap_drop)


def _check_limits(spec: ContainerSpec) -> None:
    if spec.memory_bytes < 0:
        raise InvalidArgument("memory_bytes", f"must not be negative, got {spec.memory_bytes}")
    if 0 < spec.memory_bytes < MIN_MEMORY:
        raise InvalidArgument(
            "memory_bytes", f"minimum memory limit is 6 MiB, got {spec.memory_bytes} bytes"
        )
    if spec.nano_cpus < 0:
        raise InvalidArgument("nano_cpus", f"must not be negative, got {spec.nano_cpus}")
    if spec.pids_limit < 0:
        raise InvalidArgument("pids_limit", f"must not be negative, got {spec.pids_limit}")


def check_spec(spec: ContainerSpec) -> None:
    """Check every field of a spec before the service creates it (the one check).

    Raises:
        InvalidArgument: naming the first bad field.
    """
    if spec.name and not NAME_RE.match(spec.name):
        raise InvalidArgument(
            "name",
            f"invalid container name {spec.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
        )
    _check_process(spec)
    _check_limits(spec)
    _check_ports(spec.ports)
    _check_mounts(spec)


def _network_of(request: CreateContainerRequest, published: bool) -> NetworkMode:
    network = request.network or "none"
    if network not in ("none", "host", "bridge"):
        raise InvalidArgument(
            "network", f"unknown network {request.network!r} (none, host or bridge)"
        )
    if published and network == "host":
        raise InvalidArgument(
            "ports",
            "cannot publish ports with the host network: the "
            "container uses the node's ports directly",
        )
    if network == "bridge" or published:  # publishing implies the bridge
        return "bridge"
    return "host" if network == "host" else "none"


def parse_create(request: CreateContainerRequest) -> ContainerRequest:
    """A local API create request as a checked :class:`ContainerRequest`.

    Raises:
        InvalidArgument: naming the first bad field.
    """
    ref = parse_image_ref("image", request.image)
    name = request.name.removeprefix("/")
    if name and not NAME_RE.match(name):
        raise InvalidArgument(
            "name",
            f"invalid container name {request.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
        )
    if request.pids_limit < -1:
        raise InvalidArgument(
            "pids_limit", f"must be -1 (unlimited) or more, got {request.pids_limit}"
        )
    ports = _ports_of(request)
    network = _network_of(request, bool(ports))
    policy = parse_restart_policy(request.restart_policy.name, request.restart_policy.max_retries)
    if request.auto_remove and policy.name is not RestartPolicyName.NO:
        raise InvalidArgument(
            "auto_remove",
            f"conflicts with restart policy {policy.name}: a removed container cannot restart",
        )
    if request.seccomp not in ("", "default", "unconfined"):
        raise InvalidArgument(
            "seccomp", f"unknown seccomp mode {request.seccomp!r} (default or unconfined)"
        )
    spec = ContainerSpec(
        id="",
        name=name,
        image=request.image,
        lower_dirs=(),
        command=list(request.command) or None,
        entrypoint=[] if request.clear_entrypoint else list(request.entrypoint) or None,
        env=list(request.env),
        workdir=request.workdir or None,
        user=request.user or None,
        memory_bytes=request.memory_bytes,
        nano_cpus=request.nano_cpus,
        pids_limit=max(0, request.pids_limit),
        read_only=request.read_only,
        volumes=_volumes_of(request),
        tmpfs=_tmpfs_of(request),
        network=network,
        ports=ports,
        labels=dict(request.labels),
        restart_policy=policy,
        cap_add=list(request.cap_add),
        cap_drop=list(request.cap_drop),
        hostname=request.hostname or None,
        seccomp="unconfined" if request.seccomp == "unconfined" else "default",
        privileged=request.privileged,
        tty=request.tty,
        open_stdin=request.open_stdin,
        stdin_once=request.stdin_once and request.open_stdin,
        console_size=_console_size_of(request),
    )
    check_spec(spec)
    return ContainerRequest(spec, ref, request.auto_remove)


def _console_size_of(request: CreateContainerRequest) -> tuple[int, int]:
    """The terminal's starting size; it matters only with a tty (as dockerd ignores it)."""
    if not request.tty or not request.HasField("console_size"):
        return (0, 0)
    size = request.console_size
    try:
        check_size(size.height, size.width)
    except InvalidConfig as exc:
        raise InvalidArgument("console_size", str(exc)) from None
    return (size.height, size.width)
