"""Validate API requests and turn them into runtime values; errors name the field."""

from __future__ import annotations

import ipaddress
import signal as signals
from collections.abc import Callable, Sequence
from pathlib import Path

from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.names import NAME_RE
from dockyard.agent.containers.volumes import check_volume_name
from dockyard.agent.images.errors import InvalidReference
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.runtime.base import (
    NetworkMode,
    PortMapping,
    RestartPolicy,
    RestartPolicyName,
    TmpfsMount,
    VolumeMount,
)
from dockyard.agent.runtime.runc.spec import ALL_CAPABILITIES
from dockyard.common.validation import MAX_MOUNTS, MAX_TMPFS_BYTES
from dockyard.v1.containers_pb2 import CreateContainerRequest

__all__ = [
    "MIN_MEMORY",
    "check_create",
    "check_user",
    "parse_image_ref",
    "parse_restart_policy",
    "parse_signal",
    "ports_of",
    "tmpfs_of",
    "volumes_of",
]

MIN_MEMORY = 6 * 1024 * 1024
"""Docker's smallest memory limit (6 MiB)."""
MAX_PORTS = 256
"""Most published ports of one container."""


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




def tmpfs_of(request: CreateContainerRequest) -> list[TmpfsMount]:
    """The request's tmpfs mounts: absolute paths, sizes from 0 (the default) to 1 TiB."""
    mounts = []
    for index, tmpfs in enumerate(request.tmpfs):
        field = f"tmpfs[{index}]"
        if not tmpfs.container_path.startswith("/"):
            raise InvalidArgument(f"{field}.container_path",
                                  f"not absolute: {tmpfs.container_path[:200]!r}")  # fmt: skip
        if not 0 <= tmpfs.size_bytes <= MAX_TMPFS_BYTES:
            raise InvalidArgument(f"{field}.size_bytes", "must be 0 (default) to 1 TiB, got "
                                                         f"{tmpfs.size_bytes}")  # fmt: skip
        mounts.append(TmpfsMount(tmpfs.container_path, tmpfs.size_bytes))
    return mounts


def _check_mount_targets(request: CreateContainerRequest) -> None:
    targets = [v.container_path for v in request.volumes] + [
        t.container_path for t in request.tmpfs]
    if len(targets) > MAX_MOUNTS:
        raise InvalidArgument("volumes", f"at most {MAX_MOUNTS} mounts, got {len(targets)}")
    seen: set[str] = set()
    for target in targets:
        normal = target.rstrip("/") or "/"
        if normal in seen:
            raise InvalidArgument("volumes", f"two mounts at {target[:200]!r}")
        seen.add(normal)


def volumes_of(request: CreateContainerRequest,
               mountpoint: Callable[[str], Path] | None = None) -> list[VolumeMount]:  # fmt: skip
    """The request's mounts: bind mounts of absolute paths, and named volumes, whose
    directory `mountpoint` gives (without it, names are only checked)."""
    mounts = []
    for index, volume in enumerate(request.volumes):
        field = f"volumes[{index}]"
        if volume.volume:
            if volume.host_path:
                raise InvalidArgument(f"{field}.host_path", "a named volume has no host path")
            check_volume_name(f"{field}.volume", volume.volume)
            host = mountpoint(volume.volume) if mountpoint else Path("/")
        elif not volume.host_path.startswith("/"):
            raise InvalidArgument(f"{field}.host_path", f"not absolute: {volume.host_path!r}")
        else:
            host = Path(volume.host_path)
        if not volume.container_path.startswith("/"):
            raise InvalidArgument(
                f"{field}.container_path", f"not absolute: {volume.container_path!r}"
            )
        mounts.append(VolumeMount(host, volume.container_path, volume.read_only))
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


def ports_of(request: CreateContainerRequest) -> list[PortMapping]:
    """The request's published ports, checked and normalized (protocol ``tcp`` by default,
    ``0.0.0.0`` as ``""``); no host port is published twice."""
    if len(request.ports) > MAX_PORTS:
        raise InvalidArgument("ports", f"at most {MAX_PORTS} published ports, got "
                                       f"{len(request.ports)}")  # fmt: skip
    mappings: list[PortMapping] = []
    for index, port in enumerate(request.ports):
        field = f"ports[{index}]"
        if not 1 <= port.container_port <= 65535:
            raise InvalidArgument(f"{field}.container_port",
                                  f"{port.container_port} is not in 1-65535")  # fmt: skip
        if not 0 <= port.host_port <= 65535:
            raise InvalidArgument(f"{field}.host_port", f"{port.host_port} is not in 1-65535 "
                                                        "(or 0: a free port)")  # fmt: skip
        protocol = port.protocol.strip().lower() or "tcp"
        if protocol not in ("tcp", "udp"):
            raise InvalidArgument(f"{field}.protocol", f"unknown protocol {port.protocol!r} "
                                                       "(tcp or udp)")  # fmt: skip
        mapping = PortMapping(port.container_port, protocol, port.host_port,
                              _host_ip(f"{field}.host_ip", port.host_ip))  # fmt: skip
        for other_index, other in enumerate(mappings):
            if (mapping.host_port and mapping.host_port == other.host_port
                    and mapping.protocol == other.protocol
                    and (not mapping.host_ip or not other.host_ip
                         or mapping.host_ip == other.host_ip)):  # fmt: skip
                raise InvalidArgument(f"{field}.host_port", f"{mapping.host_port}/{protocol} is "
                                      f"already published by ports[{other_index}]")  # fmt: skip
        mappings.append(mapping)
    return mappings


def _check_capabilities(field: str, names: Sequence[str]) -> None:
    for index, name in enumerate(names):
        cap = name.strip().upper()
        cap = cap if cap.startswith("CAP_") else f"CAP_{cap}"
        if cap != "CAP_ALL" and cap not in ALL_CAPABILITIES:
            raise InvalidArgument(f"{field}[{index}]", f"unknown capability {name!r}")


def check_create(request: CreateContainerRequest) -> tuple[Reference, RestartPolicy, NetworkMode]:
    """Check every field of a create request; returns the parsed image, policy, network."""
    ref = parse_image_ref("image", request.image)
    name = request.name.removeprefix("/")
    if name and not NAME_RE.match(name):
        raise InvalidArgument("name", f"invalid container name {request.name!r}: only "
                                      "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")  # fmt: skip
    for index, entry in enumerate(request.env):
        key = entry.partition("=")[0]
        if "=" not in entry or not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"env[{index}]", f"expected KEY=VALUE, got {entry!r}")
    if request.workdir and not request.workdir.startswith("/"):
        raise InvalidArgument("workdir", f"must be an absolute path, got {request.workdir!r}")
    check_user("user", request.user)
    if request.memory_bytes < 0:
        raise InvalidArgument("memory_bytes", f"must not be negative, got {request.memory_bytes}")
    if 0 < request.memory_bytes < MIN_MEMORY:
        raise InvalidArgument("memory_bytes", f"minimum memory limit is 6 MiB, got "
                                              f"{request.memory_bytes} bytes")  # fmt: skip
    if request.nano_cpus < 0:
        raise InvalidArgument("nano_cpus", f"must not be negative, got {request.nano_cpus}")
    if request.pids_limit < -1:
        raise InvalidArgument("pids_limit", f"must be -1 (unlimited) or more, got "
                                            f"{request.pids_limit}")  # fmt: skip
    network = request.network or "none"
    if network not in ("none", "host", "bridge"):
        raise InvalidArgument("network", f"unknown network {request.network!r} "
                                         "(none, host or bridge)")  # fmt: skip
    ports = ports_of(request)
    if ports and network == "host":
        raise InvalidArgument("ports", "cannot publish ports with the host network: the "
                                       "container uses the node's ports directly")  # fmt: skip
    policy = parse_restart_policy(request.restart_policy.name,
                                  request.restart_policy.max_retries)  # fmt: skip
    if request.auto_remove and policy.name is not RestartPolicyName.NO:
        raise InvalidArgument("auto_remove", "conflicts with restart policy "
                                             f"{policy.name}: a removed container cannot restart")
    if request.hostname and not NAME_RE.match(request.hostname):
        raise InvalidArgument("hostname", f"invalid hostname {request.hostname!r}")
    _check_capabilities("cap_add", request.cap_add)
    _check_capabilities("cap_drop", request.cap_drop)
    if request.seccomp not in ("", "default", "unconfined"):
        raise InvalidArgument("seccomp", f"unknown seccomp mode {request.seccomp!r} "
                                         "(default or unconfined)")  # fmt: skip
    volumes_of(request)
    tmpfs_of(request)
    _check_mount_targets(request)
    if network == "bridge" or ports:  # publishing implies the bridge
        return ref, policy, "bridge"
    return ref, policy, "host" if network == "host" else "none"
