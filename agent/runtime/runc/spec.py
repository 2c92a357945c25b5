"""Build an OCI runtime spec (``config.json``) with Docker's semantics.

Pure functions: no I/O here. The runtime reads ``/etc/passwd`` and ``/etc/group`` from the
mounted rootfs and passes their text in.
"""

from __future__ import annotations

import functools
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.agent.runtime.base import ContainerSpec, InvalidConfig, process_args
from dockyard.agent.runtime.runc.seccomp import default_profile
from dockyard.common.privilege import ALL_CAPABILITIES, DEFAULT_CAPABILITIES

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "EtcFiles",
    "ResolvedUser",
    "bounding_capabilities",
    "build_process",
    "build_spec",
    "capabilities",
    "container_capabilities",
    "default_nofile",
    "merge_env",
    "process_args",
    "resolve_user",
    "seccomp_section",
]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def _dev(path: str, major: int, minor: int) -> dict[str, Any]:
    return {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}


# runc's default allow list (libcontainer/specconv AllowedDevices) as Docker uses it.
DEFAULT_DEVICES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": -1, "minor": -1, "access": "m"},
    {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"},
    _dev("/dev/null", 1, 3),
    _dev("/dev/random", 1, 8),
    _dev("/dev/full", 1, 7),
    _dev("/dev/tty", 5, 0),
    _dev("/dev/zero", 1, 5),
    _dev("/dev/urandom", 1, 9),
    _dev("/dev/console", 5, 1),
    _dev("/dev/pts/*", 136, -1),
    _dev("/dev/ptmx", 5, 2),
    _dev("/dev/net/tun", 10, 200),
]

STANDARD_MOUNTS: list[dict[str, Any]] = [
    {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
]

CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class ResolvedUser:
    """Numeric identity of the container process."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class EtcFiles:
    """Host files the runtime writes and bind-mounts over the container's /etc ones."""

    hosts: Path
    resolv_conf: Path
    hostname: Path


def merge_env(image_env: Sequence[str], user_env: Sequence[str]) -> list[str]:
    """Image env, then user env over it (same key replaced in place); PATH defaulted."""
    merged: dict[str, str] = {}
    for entry in [*image_env, *user_env]:
        key = entry.split("=", 1)[0]
        if not key:
            raise InvalidConfig(f"invalid environment entry {entry!r}")
        merged[key] = entry if "=" in entry else f"{key}="
    if "PATH" not in merged:
        merged = {"PATH": DEFAULT_PATH, **merged}
    return list(merged.values())


def _parse_db(text: str, min_fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= min_fields:
            rows.append(parts)
    return rows


def _is_id(text: str) -> bool:
    """A uid or gid: ASCII digits only (str.isdigit also takes "¹" and "٣", which int() refuses)."""
    return text.isascii() and text.isdigit()


def resolve_user(user: str | None, passwd: str, group: str) -> ResolvedUser:
    """Resolve ``name``, ``uid``, ``uid:gid``, ``name:group`` against the rootfs databases.

    A numeric uid needs no passwd entry (gid then defaults to the entry's or 0). The
    user's supplementary groups come from ``/etc/group`` as Docker does.

    Raises:
        InvalidConfig: a name that is not in /etc/passwd or /etc/group.
    """
    spec = (user or "").strip() or "0"
    user_part, _, group_part = spec.partition(":")
    users = _parse_db(passwd, 4)
    groups = _parse_db(group, 3)
    entry: list[str] | None = None
    if _is_id(user_part):
        uid = int(user_part)
        entry = next((row for row in users if row[2] == user_part), None)
    else:
        entry = next((row for row in users if row[0] == user_part), None)
        if entry is None:
            raise InvalidConfig(
                f"unable to find user {user_part}: no matching entries in passwd file"
            )
        if not _is_id(entry[2]):
            raise InvalidConfig(f"user {user_part}: the passwd file has no numeric uid for it")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and _is_id(entry[3]) else 0
    if group_part:
        if _is_id(group_part):
            gid = int(group_part)
        else:
            grow = next((row for row in groups if row[0] == group_part), None)
            if grow is None:
                raise InvalidConfig(
                    f"unable to find group {group_part}: no matching entries in group file"
                )
            if not _is_id(grow[2]):
                raise InvalidConfig(f"group {group_part}: the group file has no numeric gid")
            gid = int(grow[2])
    name = entry[0] if entry is not None else None
    extra: list[int] = []
    if name is not None and not group_part:
        for row in groups:
            members = row[3].split(",") if len(row) > 3 else []
            if name in members and _is_id(row[2]) and int(row[2]) != gid:
                extra.append(int(row[2]))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(extra))


def _norm_cap(name: str) -> str:
    name = name.strip().upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def capabilities(cap_add: Sequence[str], cap_drop: Sequence[str]) -> list[str]:
    """Docker's default capability set with ``cap_add`` / ``cap_drop`` (``ALL`` allowed)."""
    adds = {_norm_cap(c) for c in cap_add}
    drops = {_norm_cap(c) for c in cap_drop}
    for cap in adds | drops:
        if cap != "CAP_ALL" and cap not in ALL_CAPABILITIES:
            raise InvalidConfig(f"unknown capability {cap}")
    base = ALL_CAPABILITIES if "CAP_ALL" in adds else DEFAULT_CAPABILITIES
    caps = [] if "CAP_ALL" in drops else [c for c in base if c not in drops]
    caps += [c for c in sorted(adds) if c != "CAP_ALL" and c not in caps]
    return caps


@functools.cache
def bounding_capabilities() -> tuple[str, ...]:
    """The capabilities in the agent's own bounding set (all we can hand out)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return ALL_CAPABILITIES
    mask = int(line.split()[1], 16)
    # ALL_CAPABILITIES is in kernel numbering order: CAP_CHOWN is 0.
    return tuple(cap for bit, cap in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


def container_capabilities(config: ContainerSpec) -> list[str]:
    """The capability set of ``config``; privileged: every one the agent holds itself."""
    if config.privileged:
        return list(bounding_capabilities())
    return capabilities(config.cap_add, config.cap_drop)


def seccomp_section(
    config: ContainerSpec, caps: Sequence[str], x32: bool = True
) -> dict[str, Any] | None:
    """The OCI ``linux.seccomp`` object, or ``None`` (privileged or ``unconfined``)."""
    if config.privileged or config.seccomp == "unconfined":
        return None
    return default_profile(caps, x32=x32)


def default_nofile() -> int:
    """Docker's 1048576 open files, capped by the hard limit we may hand out."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1048576 if hard == resource.RLIM_INFINITY else min(1048576, hard)


def build_process(
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: ResolvedUser,
    *,
    caps: Sequence[str],
    nofile: int = 1048576,
    terminal: bool = False,
) -> dict[str, Any]:
    """The OCI ``process`` object (also the ``runc exec --process`` file).

    ``nofile`` is the RLIMIT_NOFILE (soft = hard); it may not exceed the agent's own hard
    limit, which :func:`default_nofile` gives. With ``terminal``, ``TERM=xterm`` is added
    when the env has no ``TERM`` (as dockerd does for ``-t``).
    """
    cap_list = list(caps)
    env = list(env)
    if terminal and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    return {
        "terminal": terminal,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
        },
        "args": list(args),
        "env": env,
        "cwd": cwd or "/",
        "capabilities": {
            "bounding": cap_list,
            "effective": cap_list,
            "permitted": cap_list,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": True,
    }


def _resources(config: ContainerSpec) -> dict[str, Any]:
    devices = [{"allow": True, "access": "rwm"}] if config.privileged else DEFAULT_DEVICES
    resources: dict[str, Any] = {"devices": devices}
    if config.memory_bytes > 0:
        resources["memory"] = {"limit": config.memory_bytes, "swap": config.memory_bytes}
    if config.nano_cpus > 0:
        quota = max(1000, config.nano_cpus * CPU_PERIOD_US // 1_000_000_000)
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if config.pids_limit > 0:
        resources["pids"] = {"limit": config.pids_limit}
    return resources


def _volume_mounts(config: ContainerSpec) -> list[dict[str, Any]]:
    mounts = []
    for volume in config.volumes:
        if not volume.container.startswith("/"):
            raise InvalidConfig(f"volume destination {volume.container!r} is not absolute")
        options = ["rbind", "ro" if volume.read_only else "rw"]
        mounts.append(
            {
                "destination": volume.container,
                "type": "bind",
                "source": str(volume.host),
                "options": options,
            }
        )
    for tmpfs in config.tmpfs:
        if not tmpfs.container.startswith("/"):
            raise InvalidConfig(f"tmpfs destination {tmpfs.container!r} is not absolute")
        options = ["nosuid", "nodev", "noexec", "mode=1777"]
        if tmpfs.size_bytes > 0:
            options.append(f"size={tmpfs.size_bytes}")
        mounts.append(
            {"destination": tmpfs.container, "type": "tmpfs", "source": "tmpfs", "options": options}
        )
    return mounts


# Docker's --init: the node's static tini, bind-mounted read-only (docker's path for it).
INIT_PATH = "/sbin/docker-init"
INIT_CANDIDATES = (
    "/usr/bin/docker-init",
    "/usr/bin/tini-static",
    "/usr/libexec/docker/docker-init",
)


def init_binary() -> Path:
    """The node's static init (Debian's `tini` package); InvalidConfig when it has none."""
    for candidate in INIT_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate).resolve()
    raise InvalidConfig("--init: this node has no static tini (apt install tini)")


def init_mount() -> dict[str, Any]:
    return {
        "destination": INIT_PATH,
        "type": "bind",
        "source": str(init_binary()),
        "options": ["rbind", "rprivate", "ro"],
    }


def rlimits(
    ulimits: Sequence[tuple[str, int, int]], defaults: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The OCI rlimits: the defaults with the service's ulimits over them (-1: unlimited)."""
    unlimited = 2**64 - 1
    found = {str(d["type"]): dict(d) for d in defaults}
    for name, soft, hard in ulimits:
        key = f"RLIMIT_{name.upper()}"
        found[key] = {
            "type": key,
            "soft": unlimited if soft == -1 else soft,
            "hard": unlimited if hard == -1 else hard,
        }
    return list(found.values())


def build_spec(
    config: ContainerSpec,
    rootfs: Path,
    user: ResolvedUser,
    etc: EtcFiles,
    cgroups_path: str,
    host_devices: Sequence[Mapping[str, Any]] = (),
    netns_path: str | None = None,
    x32: bool = True,
) -> dict[str, Any]:
    """The whole OCI runtime spec for ``config`` with its rootfs mounted at ``rootfs``.

    ``host_devices`` (OCI ``linux.devices`` entries, see ``files.host_devices``) are
    created in a privileged container's ``/dev``; they are ignored otherwise.
    ``netns_path`` is the named network namespace a ``bridge`` container joins.
    ``x32=False``: the seccomp filter leaves the x32 ABI out (``seccomp.architectures``).
    """
    image: Mapping[str, Any] = config.image_config
    env = merge_env(list(image.get("Env") or []), list(config.env))
    cwd = config.workdir or image.get("WorkingDir") or "/"
    if not str(cwd).startswith("/"):
        raise InvalidConfig(f"working directory {cwd!r} is not absolute")
    caps = container_capabilities(config)
    args = process_args(config)
    if config.init:
        args = [INIT_PATH, "--", *args]
    process = build_process(
        args,
        env,
        str(cwd),
        user,
        caps=caps,
        nofile=default_nofile(),
        terminal=config.tty,
    )
    if config.tty and any(config.console_size):
        height, width = config.console_size
        process["consoleSize"] = {"height": height, "width": width}
    if config.ulimits:
        process["rlimits"] = rlimits(config.ulimits, process["rlimits"])
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "mount", "uts", "ipc")]
    if config.network == "bridge":
        if not netns_path:
            raise InvalidConfig(f"container {config.id}: the bridge network needs a namespace")
        namespaces.append({"type": "network", "path": netns_path})
    elif config.network != "host":
        namespaces.append({"type": "network"})
    etc_mounts = [
        {
            "destination": dest,
            "type": "bind",
            "source": str(src),
            "options": ["rbind", "rprivate", "ro" if config.read_only else "rw"],
        }
        for dest, src in (
            ("/etc/hosts", etc.hosts),
            ("/etc/resolv.conf", etc.resolv_conf),
            ("/etc/hostname", etc.hostname),
        )
    ]
    linux: dict[str, Any] = {
        "resources": _resources(config),
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
    }
    if config.sysctls:
        linux["sysctl"] = dict(config.sysctls)
    if config.init:
        etc_mounts.append(init_mount())
    standard_mounts = STANDARD_MOUNTS
    if config.privileged:
        # Docker's --privileged: no masked or read-only paths, /sys and cgroups writable.
        standard_mounts = [
            {**m, "options": [o for o in m["options"] if o != "ro"]}
            if m["destination"] in ("/sys", "/sys/fs/cgroup")
            else m
            for m in STANDARD_MOUNTS
        ]
        if host_devices:
            linux["devices"] = [dict(d) for d in host_devices]
    else:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    seccomp = seccomp_section(config, caps, x32)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": str(rootfs), "readonly": config.read_only},
        "hostname": config.hostname or config.id[:12],
        "mounts": [*standard_mounts, *etc_mounts, *_volume_mounts(config)],
        "linux": linux,
        "annotations": {f"dockyard.label.{k}": v for k, v in config.labels.items()},
    }
