"""Read one container's cgroup counters, from cgroup v1 (per-controller hierarchies) or v2
(the unified hierarchy), into one shape. Every read is a few small sysfs files: call from a
thread. A missing cgroup (the container exited and runc deleted it) reads as None."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "CGROUP_ROOT",
    "CgroupReader",
    "CgroupSample",
    "CgroupV1Reader",
    "CgroupV2Reader",
    "detect_reader",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 62
"""v1 writes "no limit" as a page-rounded LONG_MAX; anything this large is no limit."""
_USER_HZ = 100
"""cpuacct.stat counts in USER_HZ ticks, 100 on every Linux architecture we run on."""


@dataclass(frozen=True, slots=True)
class CgroupSample:
    """One read of a container's counters; limits are 0 when there is none."""

    cpu_usage_seconds: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    memory_usage_bytes: int
    memory_working_set_bytes: int
    """Usage less inactive file cache, as cAdvisor and the kubelet count it (what the
    kernel cannot reclaim easily, and what an OOM kill is decided on)."""
    memory_rss_bytes: int
    memory_cache_bytes: int
    memory_limit_bytes: int
    oom_kills: int
    threads: int
    threads_max: int


class CgroupReader(Protocol):
    """Reads the cgroup runc made for a container at `cgroups_path` (e.g. `/dockyard/<id>`)."""

    @property
    def version(self) -> int: ...

    def read(self, cgroups_path: str) -> CgroupSample | None: ...


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path, unlimited: str = "") -> int:
    """The first number in `path`; 0 when missing, unreadable or `unlimited`."""
    text = _text(path)
    if text is None:
        return 0
    word = text.split()[0] if text.split() else ""
    if word == unlimited or not word.isdigit():
        return 0
    value = int(word)
    return 0 if value >= _UNLIMITED else value


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (`memory.stat`, `cpu.stat`, `memory.events`): key -> value."""
    values: dict[str, int] = {}
    for line in (_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        value = value.strip()
        if value.isdigit():
            values[key] = int(value)
    return values


def _working_set(usage: int, inactive_file: int) -> int:
    return max(0, usage - inactive_file)


@dataclass(frozen=True, slots=True)
class CgroupV1Reader:
    """cgroup v1: `root/<controller>/<cgroups_path>` for cpuacct, memory and pids."""

    root: Path = CGROUP_ROOT
    version: int = 1

    def _dir(self, controller: str, cgroups_path: str) -> Path:
        return self.root / controller / cgroups_path.strip("/")

    def read(self, cgroups_path: str) -> CgroupSample | None:
        memory = self._dir("memory", cgroups_path)
        cpu = self._dir("cpuacct", cgroups_path)
        if not memory.is_dir() and not cpu.is_dir():
            return None
        pids = self._dir("pids", cgroups_path)
        ticks = _keyed(cpu / "cpuacct.stat")
        stat = _keyed(memory / "memory.stat")
        usage = _int(memory / "memory.usage_in_bytes")
        return CgroupSample(
            cpu_usage_seconds=_int(cpu / "cpuacct.usage") / 1e9,
            cpu_user_seconds=ticks.get("user", 0) / _USER_HZ,
            cpu_system_seconds=ticks.get("system", 0) / _USER_HZ,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, stat.get("total_inactive_file", 0)),
            memory_rss_bytes=stat.get("total_rss", 0),
            memory_cache_bytes=stat.get("total_cache", 0),
            memory_limit_bytes=_int(memory / "memory.limit_in_bytes"),
            oom_kills=_keyed(memory / "memory.oom_control").get("oom_kill", 0),
            threads=_int(pids / "pids.current"),
            threads_max=_int(pids / "pids.max", unlimited="max"),
        )


@dataclass(frozen=True, slots=True)
class CgroupV2Reader:
    """cgroup v2: one directory `root/<cgroups_path>` holds every controller's files."""

    root: Path = CGROUP_ROOT
    version: int = 2

    def read(self, cgroups_path: str) -> CgroupSample | None:
        group = self.root / cgroups_path.strip("/")
        if not group.is_dir():
            return None
        cpu = _keyed(group / "cpu.stat")
        stat = _keyed(group / "memory.stat")
        usage = _int(group / "memory.current")
        return CgroupSample(
            cpu_usage_seconds=cpu.get("usage_usec", 0) / 1e6,
            cpu_user_seconds=cpu.get("user_usec", 0) / 1e6,
            cpu_system_seconds=cpu.get("system_usec", 0) / 1e6,
            memory_usage_bytes=usage,
            memory_working_set_bytes=_working_set(usage, stat.get("inactive_file", 0)),
            memory_rss_bytes=stat.get("anon", 0),
            memory_cache_bytes=stat.get("file", 0),
            memory_limit_bytes=_int(group / "memory.max", unlimited="max"),
            # memory.events counts kills in this cgroup and its descendants ("local" only here)
            oom_kills=_keyed(group / "memory.events").get("oom_kill", 0),
            threads=_int(group / "pids.current"),
            threads_max=_int(group / "pids.max", unlimited="max"),
        )


def detect_reader(root: Path = CGROUP_ROOT) -> CgroupReader:
    """v2 when `root` is the unified hierarchy (it has `cgroup.controllers`), else v1
    (also on a hybrid host: runc puts the limits in the v1 hierarchies there)."""
    if (root / "cgroup.controllers").is_file():
        return CgroupV2Reader(root)
    return CgroupV1Reader(root)
