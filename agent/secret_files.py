"""Secrets on a node: in memory, and as files on a tmpfs for the tasks that use them.

The controller sends a secret's data only in the assignment set of a node that runs a
task referencing it. The agent keeps the data in memory (never in its state dir) and,
when such a task's container is made, writes the task's files into
`/run/dockyard/secrets/<node id>/<task id>/` on a tmpfs (one is mounted there when the
directory is not on a tmpfs already), with the reference's uid, gid and mode. Each file
is bind-mounted read-only at `/run/secrets/<target>` in the container. The task's
directory is removed with its container, and at agent start for tasks no longer held.
The tmpfs is unmounted when the agent stops with no task directory left.

Configs (docs/configs.md) take the same path: their data comes in the same sets, their
files are written in the task's directory (under `configs/`) and bind-mounted
read-only at the reference's absolute target (default `/<config name>`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dockyard.common.atomic_file import write_atomic
from dockyard.common.task_refs import referenced
from dockyard.v1.workloads_pb2 import Config, Secret, Task

__all__ = ["CONTAINER_DIR", "DEFAULT_ROOT", "SecretFileError", "SecretFiles", "SecretMount"]

log = structlog.get_logger(__name__)

DEFAULT_ROOT = Path("/run/dockyard/secrets")
CONTAINER_DIR = "/run/secrets"
TMPFS_SIZE = "64m"


class SecretFileError(Exception):
    """A task's secrets cannot be written (not delivered, no tmpfs); the task is rejected."""


@dataclass(frozen=True)
class SecretMount:
    host_path: str
    container_path: str


def filesystem_of(path: Path, mountinfo: str | None = None) -> tuple[str, str]:
    """The mount point and the filesystem type `path` is on (/proc/self/mountinfo)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    resolved = str(path.resolve())
    best, fstype = "", ""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = fields[4].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, right.split()[0]
    return best, fstype


class SecretFiles:
    """One agent's secrets: `root` is `/run/dockyard/secrets/<node id>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._data: dict[str, bytes] = {}
        self._mounted = False

    def update(self, secrets: Iterable[Secret], configs: Iterable[Config] = ()) -> None:
        """A full assignment set: the secrets and configs this node may hold now (and no
        others)."""
        self._data = {s.id: bytes(s.spec.data) for s in secrets}
        self._data.update({c.id: bytes(c.spec.data) for c in configs})

    def merge(
        self, secrets: Iterable[Secret], configs: Iterable[Config], tasks: Iterable[Task]
    ) -> None:
        """A delta set: add its secrets and configs, then keep only those the node's
        tasks (``tasks``, after the delta) reference."""
        self._data.update({s.id: bytes(s.spec.data) for s in secrets})
        self._data.update({c.id: bytes(c.spec.data) for c in configs})
        secret_ids, config_ids = referenced(tasks)
        wanted = secret_ids | config_ids
        self._data = {i: data for i, data in self._data.items() if i in wanted}

    def held(self) -> set[str]:
        return set(self._data)

    def task_dir(self, task_id: str) -> Path:
        return self.root / task_id

    def write(self, task: Task) -> list[SecretMount]:
        """Write the task's secret files; the bind mounts that put them in its container."""
        refs = list(task.spec.container.secrets)
        configs = list(task.spec.container.configs)
        if not refs and not configs:
            return []
        missing = [f"secret {r.secret_name or r.secret_id}" for r in refs] + [
            f"config {c.config_name or c.config_id}" for c in configs
        ]
        ids = [r.secret_id for r in refs] + [c.config_id for c in configs]
        missing = [what for what, i in zip(missing, ids, strict=True) if i not in self._data]
        if missing:
            raise SecretFileError(
                f"{', '.join(missing)} was not delivered to this node "
                "(removed, or the controller could not read it)"
            )
        self._ensure_tmpfs()
        directory = self.task_dir(task.id)
        directory.mkdir(mode=0o700, exist_ok=True)
        mounts = []
        for ref in refs:
            target = ref.target or ref.secret_name
            if not target or "/" in target or target in (".", ".."):
                raise SecretFileError(f"secret {ref.secret_name}: bad target {target!r}")
            path = self._write_file(directory, target, self._data[ref.secret_id], ref)
            mounts.append(SecretMount(str(path), f"{CONTAINER_DIR}/{target}"))
        if configs:
            (directory / "configs").mkdir(mode=0o700, exist_ok=True)
        for index, config in enumerate(configs):
            target = config.target or f"/{config.config_name}"
            if not target.startswith("/") or ".." in target.split("/"):
                raise SecretFileError(f"config {config.config_name}: bad target {target!r}")
            data = self._data[config.config_id]
            path = self._write_file(directory / "configs", str(index), data, config)
            mounts.append(SecretMount(str(path), target))
        return mounts

    @staticmethod
    def _write_file(directory: Path, name: str, data: bytes, ref: Any) -> Path:
        """One file, written whole then renamed, with the reference's owner and mode."""
        path = directory / name
        # On a tmpfs (never on disk): nothing to sync.
        write_atomic(path, data, mode=ref.mode or 0o444, owner=(ref.uid, ref.gid), durable=False)
        return path

    def remove(self, task_id: str) -> None:
        """The task's container is gone: so are its files."""
        directory = self.task_dir(task_id)
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            log.info("secrets.removed", task_id=task_id)

    def prune(self, keep: Iterable[str]) -> None:
        """Remove the files of every task not in `keep` (at start: tasks no longer held)."""
        wanted = set(keep)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for child in self.root.iterdir():
                if child.name not in wanted:
                    self.remove(child.name)

    def close(self) -> None:
        """Forget the data; unmount the tmpfs when no task's files are left on it."""
        self._data = {}
        try:
            left = any(self.root.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        if left:
            log.info("secrets.kept", root=str(self.root), reason="tasks still hold files")
            return
        point, _ = filesystem_of(self.root)
        if point == str(self.root.resolve()):
            result = subprocess.run(["umount", str(self.root)], capture_output=True, text=True)
            if result.returncode != 0:
                log.warning("secrets.umount_failed", root=str(self.root), error=result.stderr)
                return
        with contextlib.suppress(OSError):
            self.root.rmdir()
            self.root.parent.rmdir()  # the last agent on this host

    def _ensure_tmpfs(self) -> None:
        if self._mounted:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _, fstype = filesystem_of(self.root)
        if fstype != "tmpfs":
            result = subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={TMPFS_SIZE},mode=0700,nosuid,nodev,noexec",
                    "tmpfs",
                    str(self.root),
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise SecretFileError(
                    f"cannot mount a tmpfs at {self.root} for secrets: {result.stderr.strip()}"
                )
            log.info("secrets.tmpfs_mounted", root=str(self.root), size=TMPFS_SIZE)
        os.chmod(self.root, 0o700)
        self._mounted = True
