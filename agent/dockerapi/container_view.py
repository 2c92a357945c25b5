"""A container as Docker's clients read it: ``/containers/{id}/json`` and the rows of
``/containers/json``, from the agent's own view (runtime info and service record)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi.system import STORAGE_DRIVER
from dockyard.agent.executor import LABEL_TASK_ID
from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    InvalidConfig,
    PortMapping,
    process_args,
)

__all__ = [
    "ZERO_TIME",
    "docker_time",
    "inspect_body",
    "is_task",
    "label_matches",
    "list_row",
    "port_bindings",
    "ports_map",
    "status_text",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Docker's zero time (a container that never started or finished)."""


def docker_time(value: datetime | None) -> str:
    """RFC 3339 with nanoseconds in UTC, as Go prints a ``time.Time``."""
    if value is None:
        return ZERO_TIME
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def is_task(info: ContainerInfo) -> bool:
    """A service task's container (the controller's, read-only from the Docker side)."""
    return LABEL_TASK_ID in info.labels


def _args(spec: ContainerSpec) -> list[str]:
    try:
        return process_args(spec)
    except InvalidConfig:
        return []


def _env(spec: ContainerSpec) -> list[str]:
    """The image's env overridden by the container's, as Docker shows it."""
    merged: dict[str, str] = {}
    for entry in [*(spec.image_config.get("Env") or []), *spec.env]:
        key, _, _ = str(entry).partition("=")
        merged[key] = str(entry)
    return list(merged.values())


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "a while"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    if seconds >= 60:
        return "About a minute" if seconds < 120 else f"{seconds // 60} minutes"
    return "Less than a second" if seconds < 1 else f"{seconds} seconds"


def status_text(info: ContainerInfo, now: datetime | None = None) -> str:
    """``Up 3 seconds``, ``Exited (0) 2 minutes ago``, ``Created`` (``docker ps``)."""
    now = now or datetime.now(UTC)
    state = info.state
    if state.status is ContainerStatus.RUNNING:
        return f"Up {_ago(state.started_at, now)}"
    if state.status is ContainerStatus.CREATED:
        return "Created"
    if state.status is ContainerStatus.DEAD:
        return "Dead"
    code = state.exit_code if state.exit_code is not None else -1
    return f"Exited ({code}) {_ago(state.finished_at, now)} ago"


def _bound_ports(info: ContainerInfo) -> Sequence[PortMapping]:
    """The ports as bound (a picked host port filled in) when running, else as asked."""
    if info.network is not None and info.network.ports:
        return info.network.ports
    return info.config.ports


def ports_map(info: ContainerInfo) -> dict[str, list[dict[str, str]] | None]:
    """``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}``."""
    ports: dict[str, list[dict[str, str]] | None] = {}
    for mapping in _bound_ports(info):
        key = f"{mapping.container_port}/{mapping.protocol}"
        ports.setdefault(key, [])
        entries = ports[key]
        assert entries is not None
        entries.append(
            {"HostIp": mapping.host_ip or "0.0.0.0", "HostPort": str(mapping.host_port or "")}
        )
    return ports


def port_bindings(spec: ContainerSpec) -> dict[str, list[dict[str, str]]]:
    """``HostConfig.PortBindings``: the ports as asked."""
    bindings: dict[str, list[dict[str, str]]] = {}
    for mapping in spec.ports:
        key = f"{mapping.container_port}/{mapping.protocol}"
        bindings.setdefault(key, []).append(
            {"HostIp": mapping.host_ip, "HostPort": str(mapping.host_port or "")}
        )
    return bindings


def _network_settings(info: ContainerInfo) -> dict[str, Any]:
    network = info.network
    mode = info.config.network
    ip = network.ip_address if network is not None else ""
    prefix = network.prefix_length if network is not None else 0
    gateway = network.gateway if network is not None else ""
    mac = network.mac_address if network is not None else ""
    endpoint = {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "NetworkID": mode,
        "EndpointID": info.id if network is not None else "",
        "Gateway": gateway,
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": mac,
        "DriverOpts": None,
    }
    return {
        "Bridge": network.bridge if network is not None else "",
        "SandboxID": info.id,
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports_map(info),
        "SandboxKey": info.config.endpoint.netns_path if info.config.endpoint else "",
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": endpoint["EndpointID"],
        "Gateway": gateway,
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "IPv6Gateway": "",
        "MacAddress": mac,
        "Networks": {mode: endpoint},
    }


def _mounts(spec: ContainerSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    for volume in spec.volumes:
        mounts.append(
            {
                "Type": "volume" if volume.volume else "bind",
                "Name": volume.volume or None,
                "Source": str(volume.host),
                "Destination": volume.container,
                "Driver": "local" if volume.volume else "",
                "Mode": "ro" if volume.read_only else "",
                "RW": not volume.read_only,
                "Propagation": "" if volume.volume else "rprivate",
            }
        )
    for tmpfs in spec.tmpfs:
        mounts.append(
            {
                "Type": "tmpfs",
                "Source": "",
                "Destination": tmpfs.container,
                "Mode": "",
                "RW": True,
                "Propagation": "",
            }
        )
    return mounts


def _binds(spec: ContainerSpec) -> list[str] | None:
    binds = [
        f"{v.volume or v.host}:{v.container}{':ro' if v.read_only else ''}" for v in spec.volumes
    ]
    return binds or None


def _host_config(spec: ContainerSpec, auto_remove: bool) -> dict[str, Any]:
    return {
        "Binds": _binds(spec),
        "NetworkMode": "default" if spec.network == "bridge" else spec.network,
        "PortBindings": port_bindings(spec),
        "RestartPolicy": {
            "Name": spec.restart_policy.name.value,
            "MaximumRetryCount": spec.restart_policy.max_retries,
        },
        "AutoRemove": auto_remove,
        "CapAdd": list(spec.cap_add) or None,
        "CapDrop": list(spec.cap_drop) or None,
        "Privileged": spec.privileged,
        "ReadonlyRootfs": spec.read_only,
        "SecurityOpt": ["seccomp=unconfined"] if spec.seccomp == "unconfined" else None,
        "Tmpfs": {t.container: f"size={t.size_bytes}" if t.size_bytes else "" for t in spec.tmpfs}
        or None,
        "Memory": spec.memory_bytes,
        "MemorySwap": spec.memory_bytes * 2 if spec.memory_bytes else 0,
        "NanoCpus": spec.nano_cpus,
        "CpuShares": 0,
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "PidsLimit": spec.pids_limit or None,
        "LogConfig": {"Type": "json-file", "Config": {}},
        "VolumeDriver": "",
        "VolumesFrom": None,
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "Init": None,
        "IpcMode": "private",
        "PidMode": "",
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 67108864,
        "Runtime": "runc",
        "Isolation": "",
        "Mounts": None,
        "ConsoleSize": list(spec.console_size),
    }


def _config(info: ContainerInfo, image_id: str) -> dict[str, Any]:
    spec = info.config
    image = spec.image_config
    ports: dict[str, dict[str, Any]] = {f"{p.container_port}/{p.protocol}": {} for p in spec.ports}
    for key in image.get("ExposedPorts") or {}:
        ports.setdefault(str(key), {})
    return {
        "Hostname": spec.hostname or info.id[:12],
        "Domainname": "",
        "User": spec.user if spec.user is not None else str(image.get("User") or ""),
        "AttachStdin": spec.open_stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "ExposedPorts": ports or None,
        "Tty": spec.tty,
        "OpenStdin": spec.open_stdin,
        "StdinOnce": spec.stdin_once,
        "Env": _env(spec),
        "Cmd": list(spec.command) if spec.command is not None else image.get("Cmd"),
        "Image": spec.image,
        "Volumes": None,
        "WorkingDir": spec.workdir or str(image.get("WorkingDir") or ""),
        "Entrypoint": list(spec.entrypoint)
        if spec.entrypoint is not None
        else image.get("Entrypoint"),
        "OnBuild": None,
        "Labels": dict(spec.labels),
        "StopSignal": image.get("StopSignal") or None,
    }


def inspect_body(view: ContainerView, image_id: str = "") -> dict[str, Any]:
    """``GET /containers/{id}/json``."""
    info, meta = view.info, view.meta
    state = info.state
    args = _args(info.config)
    running = state.status is ContainerStatus.RUNNING
    return {
        "Id": info.id,
        "Created": docker_time(info.created_at),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": state.status.value,
            "Running": running,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": state.oom_killed,
            "Dead": state.status is ContainerStatus.DEAD,
            "Pid": state.pid if running else 0,
            "ExitCode": state.exit_code or 0,
            "Error": state.error,
            "StartedAt": docker_time(state.started_at),
            "FinishedAt": docker_time(state.finished_at),
        },
        "Image": image_id or meta.image_digest,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": str(info.log_path or ""),
        "Name": f"/{info.name}",
        "RestartCount": state.restart_count,
        "Driver": STORAGE_DRIVER,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(info.config, meta.auto_remove),
        "GraphDriver": {"Name": STORAGE_DRIVER, "Data": None},
        "Mounts": _mounts(info.config),
        "Config": _config(info, image_id),
        "NetworkSettings": _network_settings(info),
    }


def _command(spec: ContainerSpec) -> str:
    return " ".join(_args(spec))


def _row_ports(info: ContainerInfo) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for mapping in _bound_ports(info):
        row: dict[str, Any] = {"PrivatePort": mapping.container_port, "Type": mapping.protocol}
        if mapping.host_port:
            row.update(IP=mapping.host_ip or "0.0.0.0", PublicPort=mapping.host_port)
        rows.append(row)
    return rows


def list_row(
    view: ContainerView, image_id: str = "", now: datetime | None = None
) -> dict[str, Any]:
    """One row of ``GET /containers/json``."""
    info = view.info
    settings = _network_settings(info)
    return {
        "Id": info.id,
        "Names": [f"/{info.name}"],
        "Image": info.image,
        "ImageID": image_id or view.meta.image_digest,
        "Command": _command(info.config),
        "Created": int(info.created_at.timestamp()),
        "Ports": _row_ports(info),
        "Labels": dict(info.labels),
        "State": info.state.status.value,
        "Status": status_text(info, now),
        "HostConfig": {"NetworkMode": _host_config(info.config, False)["NetworkMode"]},
        "NetworkSettings": {"Networks": settings["Networks"]},
        "Mounts": _mounts(info.config),
    }


def label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    """Docker's ``label`` filter: ``key`` or ``key=value``."""
    key, has_value, value = wanted.partition("=")
    return key in labels and (not has_value or labels[key] == value)
