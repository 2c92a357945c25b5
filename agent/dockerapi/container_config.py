"""Docker's create body (``POST /containers/create``) as the agent's own create request.

The body becomes a ``CreateContainerRequest``, the message ``dockyard -H NODE run``
sends, so it goes through the same parsing (``containers.request.parse_create``) and the
same privilege policy (``containers.admission``) as every other container of the agent.
What the agent has no field for is either refused with 400 naming it (a behaviour a
client relies on: ``--network container:X``, port ranges) or accepted and ignored
(cosmetic or tuning options, listed in ``docs/docker-api.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dockyard.agent.dockerapi.errors import bad_request
from dockyard.agent.runtime.base import InvalidConfig
from dockyard.agent.runtime.runc.attach import check_size
from dockyard.v1 import containers_pb2 as pb

__all__ = ["DockerCreate", "parse_create_body"]

MAX_ENTRIES = 4096
"""Most entries of any list or map of the body (env, labels, binds, ports)."""


@dataclass(frozen=True, slots=True)
class DockerCreate:
    """A parsed create body.

    Attributes:
        request: The agent's create request (not checked yet: ``parse_create`` does).
        tty: ``Tty``: a terminal for the process (the interactive work carries it on).
        open_stdin: ``OpenStdin``: stdin kept open for attach.
        stdin_once: ``StdinOnce``: stdin closed after the first attach ends.
        attach_stdin: ``AttachStdin``.
        exposed_ports: ``ExposedPorts`` keys (``80/tcp``), shown by inspect.
    """

    request: pb.CreateContainerRequest
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    attach_stdin: bool = False
    exposed_ports: tuple[str, ...] = ()


def _obj(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad_request(f"{key}: expected an object")
    if len(value) > MAX_ENTRIES:
        raise bad_request(f"{key}: more than {MAX_ENTRIES} entries")
    return value


def _strings(body: Mapping[str, Any], key: str) -> list[str] | None:
    """A list of strings (Docker's StrSlice also takes one string); None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{key}: expected a list of strings")
    if len(value) > MAX_ENTRIES:
        raise bad_request(f"{key}: more than {MAX_ENTRIES} entries")
    return value


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{key}: expected a string")
    return value


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{key}: expected an integer")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{key}: expected true or false")
    return value


def _console_size(host: Mapping[str, Any]) -> pb.TerminalSize | None:
    """``HostConfig.ConsoleSize``: ``[height, width]``, which Docker's CLI sends at create
    (API 1.42+) so that a ``-t`` process starts at the terminal's size."""
    value = host.get("ConsoleSize")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise bad_request("HostConfig.ConsoleSize: expected [height, width], two integers")
    height, width = value
    try:
        check_size(height, width)
    except InvalidConfig as exc:
        raise bad_request(f"HostConfig.ConsoleSize: {exc}") from None
    return pb.TerminalSize(height=height, width=width) if height or width else None


RESERVED_LABEL_PREFIX = "dockyard.task."
"""Labels the controller's task containers carry; a container made here cannot claim
them (it would pass for a service task's)."""


def _labels(body: Mapping[str, Any]) -> dict[str, str]:
    labels = _obj(body, "Labels")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise bad_request("Labels: expected an object of strings")
    reserved = sorted(k for k in labels if k.startswith(RESERVED_LABEL_PREFIX))
    if reserved:
        raise bad_request(f"Labels: {reserved[0]} is reserved for the tasks of dockyard services")
    return dict(labels)


def _volume_spec(source: str, target: str, read_only: bool, field: str) -> pb.VolumeSpec:
    if not target.startswith("/"):
        raise bad_request(f"{field}: invalid mount target {target!r}: not an absolute path")
    if source.startswith("/"):
        return pb.VolumeSpec(host_path=source, container_path=target, read_only=read_only)
    return pb.VolumeSpec(volume=source, container_path=target, read_only=read_only)


def _bind(text: str, index: int) -> pb.VolumeSpec:
    """``SRC:DST[:OPTS]`` (``ro``, ``rw``; SELinux and propagation options accepted)."""
    field = f"HostConfig.Binds[{index}]"
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise bad_request(f"{field}: invalid volume specification: {text!r}")
    options = parts[2].split(",") if len(parts) == 3 else []
    known = {"ro", "rw", "z", "Z", "rprivate", "private", "rshared", "shared", "rslave", "slave"}
    known |= {"nocopy", "consistent", "cached", "delegated"}
    unknown = [o for o in options if o not in known]
    if unknown:
        raise bad_request(f"{field}: invalid mode: {','.join(unknown)}")
    return _volume_spec(parts[0], parts[1], "ro" in options, field)


def _mounts(host: Mapping[str, Any]) -> tuple[list[pb.VolumeSpec], list[pb.TmpfsSpec]]:
    """``HostConfig.Mounts`` (bind, volume, tmpfs) and ``HostConfig.Tmpfs``."""
    volumes: list[pb.VolumeSpec] = []
    tmpfs: list[pb.TmpfsSpec] = []
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list) or len(mounts) > MAX_ENTRIES:
        raise bad_request("HostConfig.Mounts: expected a list of mounts")
    for index, mount in enumerate(mounts):
        field = f"HostConfig.Mounts[{index}]"
        if not isinstance(mount, Mapping):
            raise bad_request(f"{field}: expected an object")
        kind, target = _str(mount, "Type") or "volume", _str(mount, "Target")
        if kind == "tmpfs":
            options = _obj(mount, "TmpfsOptions")
            tmpfs.append(pb.TmpfsSpec(container_path=target, size_bytes=_int(options, "SizeBytes")))
        elif kind in ("bind", "volume"):
            source = _str(mount, "Source")
            if kind == "bind" and not source.startswith("/"):
                raise bad_request(f"{field}.Source: a bind mount needs an absolute host path")
            if kind == "volume" and (not source or source.startswith("/")):
                raise bad_request(f"{field}.Source: a volume mount needs a volume name")
            volumes.append(_volume_spec(source, target, _bool(mount, "ReadOnly"), field))
        else:
            raise bad_request(f"{field}.Type: mount type {kind!r} is not supported by dockyard")
    for target, options in _obj(host, "Tmpfs").items():
        size = 0
        for option in str(options).split(","):
            key, _, value = option.partition("=")
            if key == "size" and value:
                size = _size(value, f"HostConfig.Tmpfs[{target}]")
        tmpfs.append(pb.TmpfsSpec(container_path=str(target), size_bytes=size))
    return volumes, tmpfs


def _size(text: str, field: str) -> int:
    from dockyard.common.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise bad_request(f"{field}: {exc}") from None


def _port_key(key: str, field: str) -> tuple[int, str]:
    """``80/tcp`` (or ``80``) to (80, "tcp")."""
    port, _, protocol = key.partition("/")
    protocol = protocol or "tcp"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise bad_request(f"{field}: invalid port {key!r}")
    if protocol not in ("tcp", "udp"):
        raise bad_request(f"{field}: protocol {protocol!r} is not supported (tcp or udp)")
    return int(port), protocol


def _ports(config: Mapping[str, Any], host: Mapping[str, Any]) -> list[pb.PortMapping]:
    """``HostConfig.PortBindings`` and, with ``PublishAllPorts``, every exposed port."""
    mappings: list[pb.PortMapping] = []
    bound: set[str] = set()
    for key, bindings in _obj(host, "PortBindings").items():
        field = f"HostConfig.PortBindings[{key}]"
        container_port, protocol = _port_key(str(key), field)
        bound.add(f"{container_port}/{protocol}")
        for binding in bindings or [{}]:
            if not isinstance(binding, Mapping):
                raise bad_request(f"{field}: expected a list of {{HostIp, HostPort}}")
            host_port = _str(binding, "HostPort")
            if "-" in host_port:
                raise bad_request(f"{field}: host port ranges are not supported by dockyard")
            if host_port and not (host_port.isascii() and host_port.isdigit()):
                raise bad_request(f"{field}: invalid host port {host_port!r}")
            mappings.append(
                pb.PortMapping(
                    host_ip=_str(binding, "HostIp"),
                    host_port=int(host_port or 0),
                    container_port=container_port,
                    protocol=protocol,
                )
            )
    if _bool(host, "PublishAllPorts"):
        for key in _obj(config, "ExposedPorts"):
            container_port, protocol = _port_key(str(key), f"ExposedPorts[{key}]")
            if f"{container_port}/{protocol}" not in bound:
                mappings.append(pb.PortMapping(container_port=container_port, protocol=protocol))
    return mappings


def _network(host: Mapping[str, Any]) -> str:
    mode = _str(host, "NetworkMode") or "default"
    if mode in ("default", "bridge"):
        return "bridge"
    if mode in ("host", "none"):
        return mode
    if mode.startswith("container:"):
        raise bad_request("HostConfig.NetworkMode: container:<name> is not supported by dockyard")
    # 400, not Docker's 404: the docker CLI takes any 404 of a create for a missing image
    raise bad_request(
        f"network {mode} not found: this agent's containers join bridge, host or none"
    )


def _nano_cpus(host: Mapping[str, Any]) -> int:
    nano = _int(host, "NanoCpus")
    quota, period = _int(host, "CpuQuota"), _int(host, "CpuPeriod")
    if nano and quota > 0:
        raise bad_request("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if quota > 0:  # --cpu-quota: the same limit in other units
        return quota * 1_000_000_000 // (period or 100_000)
    return nano


def _seccomp(host: Mapping[str, Any]) -> str:
    options = _strings(host, "SecurityOpt") or []
    for option in options:
        key, _, value = option.replace(":", "=", 1).partition("=")
        if key == "seccomp":
            if value != "unconfined":
                raise bad_request(
                    f"HostConfig.SecurityOpt: seccomp profile {value!r} is not supported by "
                    "dockyard (unconfined or the default)"
                )
            return "unconfined"
        if key not in ("no-new-privileges", "label", "apparmor"):
            raise bad_request(f"HostConfig.SecurityOpt: {option!r} is not supported by dockyard")
    return ""


def parse_create_body(body: Any, name: str) -> DockerCreate:
    """Docker's create body and ``?name=`` as a :class:`DockerCreate`.

    Raises:
        DockerApiError: 400 naming the malformed or unsupported field.
    """
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    host = _obj(body, "HostConfig")
    image = _str(body, "Image")
    if not image:
        raise bad_request("Config.Image: an image is required")
    binds = [_bind(b, i) for i, b in enumerate(_strings(host, "Binds") or [])]
    volumes, tmpfs = _mounts(host)
    entrypoint = _strings(body, "Entrypoint")
    cleared = entrypoint is not None and not any(entrypoint)  # --entrypoint "": [""]
    policy = _obj(host, "RestartPolicy")
    pids = _int(host, "PidsLimit")
    request = pb.CreateContainerRequest(
        image=image,
        name=name,
        command=_strings(body, "Cmd") or [],
        entrypoint=[] if cleared else entrypoint or [],
        clear_entrypoint=cleared,
        env=_strings(body, "Env") or [],
        workdir=_str(body, "WorkingDir"),
        user=_str(body, "User"),
        memory_bytes=_int(host, "Memory"),
        nano_cpus=_nano_cpus(host),
        pids_limit=-1 if pids < 0 else pids,
        read_only=_bool(host, "ReadonlyRootfs"),
        volumes=binds + volumes,
        restart_policy=pb.RestartPolicySpec(
            name=_str(policy, "Name"), max_retries=_int(policy, "MaximumRetryCount")
        ),
        network=_network(host),
        labels=_labels(body),
        cap_add=_strings(host, "CapAdd") or [],
        cap_drop=_strings(host, "CapDrop") or [],
        hostname=_str(body, "Hostname"),
        auto_remove=_bool(host, "AutoRemove"),
        privileged=_bool(host, "Privileged"),
        seccomp=_seccomp(host),
        ports=_ports(body, host),
        tmpfs=tmpfs,
        tty=_bool(body, "Tty"),
        open_stdin=_bool(body, "OpenStdin"),
        stdin_once=_bool(body, "StdinOnce"),
        console_size=_console_size(host),
    )
    if request.network == "host" and request.ports:  # docker drops them with a warning
        del request.ports[:]
    return DockerCreate(
        request=request,
        tty=_bool(body, "Tty"),
        open_stdin=_bool(body, "OpenStdin"),
        stdin_once=_bool(body, "StdinOnce"),
        attach_stdin=_bool(body, "AttachStdin"),
        exposed_ports=tuple(str(k) for k in _obj(body, "ExposedPorts")),
    )
