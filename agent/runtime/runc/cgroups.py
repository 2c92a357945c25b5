"""Read a container's cgroup v1 counters (stats, OOM kills)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupCounters", "CgroupV1", "rmdir_tree"]

_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class CgroupCounters:
    """Raw counters of one read."""

    cpu_usage_ns: int
    memory_usage: int
    memory_limit: int
    pids: int


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


class CgroupV1:
    """The v1 hierarchy of one container (``cgroupsPath`` relative to each controller).

    Every method blocks on small sysfs reads: call it from a thread.
    """

    def __init__(self, cgroups_path: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        """``cgroups_path`` as given to runc, e.g. ``/dockyard/<id>``."""
        self.rel = cgroups_path.strip("/")
        self.root = root

    def path(self, controller: str) -> Path:
        """The container's directory in ``controller``'s hierarchy."""
        return self.root / controller / self.rel

    def counters(self) -> CgroupCounters:
        """cpuacct.usage, memory usage/limit, pids.current."""
        limit = _read_int(self.path("memory") / "memory.limit_in_bytes")
        return CgroupCounters(
            cpu_usage_ns=_read_int(self.path("cpuacct") / "cpuacct.usage"),
            memory_usage=_read_int(self.path("memory") / "memory.usage_in_bytes"),
            memory_limit=0 if limit >= _UNLIMITED else limit,
            pids=_read_int(self.path("pids") / "pids.current"),
        )

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a task of this cgroup (``oom_kill`` counter)."""
        try:
            text = (self.path("memory") / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value) > 0
        return False

    def remove(self) -> bool:
        """Remove this cgroup's directory in every hierarchy (blocking); whether none is
        left (one that still holds processes stays).

        One ``rmdir`` per hierarchy in the common case (no child cgroup, or gone
        already), without first probing which directories exist."""
        try:
            controllers = [p.name for p in self.root.iterdir()]
        except OSError:
            return True
        left = False
        for controller in controllers:
            path = self.path(controller)
            try:
                os.rmdir(path)
                continue
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:  # child cgroups (a walk), or processes in it (it stays)
                rmdir_tree(path)
            left = left or os.path.isdir(path)
        return not left


def rmdir_tree(path: Path) -> None:
    """Remove an (empty of tasks) cgroup directory and its children, deepest first."""
    try:
        path.rmdir()  # the common case: no child cgroups (no walk over the control files)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
