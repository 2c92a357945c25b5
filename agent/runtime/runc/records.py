"""On-disk records of the runc runtime's containers.

One directory per container under ``<state_root>/containers/<id>/``; ``container.json``
(our :class:`ContainerSpec` + :class:`ContainerState` + bookkeeping) is replaced
atomically (write a temp file, then ``rename``) so a SIGKILLed agent never leaves a torn
record behind.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    NetworkInfo,
)
from dockyard.agent.runtime.runc.conmon import ConmonPaths
from dockyard.common.atomic_file import write_atomic as write_file_atomic

__all__ = [
    "ContainerDir",
    "ContainerRecord",
    "encode_record",
    "load_record",
    "save_record",
    "write_atomic",
]


class ContainerDir:
    """The file layout of one container's state directory."""

    def __init__(self, base: Path) -> None:
        """``base`` is ``<state_root>/containers/<id>``."""
        self.base = base
        self.record = base / "container.json"
        self.bundle = base / "bundle"
        self.spec = base / "bundle" / "config.json"
        self.rootfs = base / "rootfs"
        self.log = base / "ctr.log"
        self.conmon_log = base / "conmon.log"  # conmon's stderr (its own errors)
        # Where earlier agents kept the /etc files (this one: in the bundle) and where
        # their conmons wrote (a container they started may still run): exit/<id>
        # (--exit-dir) and persist/exit, persist/oom (--persist-dir).
        self.etc = base / "etc"
        self.exit_dir = base / "exit"
        self.persist = base / "persist"

    def conmon_paths(self) -> ConmonPaths:
        """Where conmon reads and writes: the bundle, which exists. Its persist dir is the
        bundle, where it writes ``oom`` anyway (its working directory), so ``exit`` and
        ``oom`` land there; no ``--exit-dir`` (the same code again, by container ID: one
        more file); its attach socket in the bundle without a symlink to it from a socket
        dir (``--full-attach``). A start makes no directory (earlier agents made three,
        and conmon two more files: each inode costs about 0.1 ms of CPU on a busy ext4)."""
        return ConmonPaths(
            bundle=self.bundle,
            log=self.log,
            exit_dir=None,
            persist_dir=self.bundle,
            pid_file=self.base / "pid",
            conmon_pid_file=self.base / "conmon.pid",
            socket_dir=None,
            conmon_log=self.conmon_log,
        )

    def exit_files(self, container_id: str) -> tuple[Path, ...]:
        """conmon's exit code files, this agent's first, then earlier agents'."""
        return (self.bundle / "exit", self.exit_dir / container_id, self.persist / "exit")

    def oom_files(self) -> tuple[Path, ...]:
        """conmon's OOM markers (its working directory, then earlier agents' persist dir)."""
        return (self.bundle / "oom", self.persist / "oom")


@dataclass(slots=True)
class ContainerRecord:
    """Everything the runtime keeps about one container."""

    config: ContainerSpec
    state: ContainerState
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    cgroups_path: str = ""
    conmon_pid: int = 0
    config_json: tuple[ContainerSpec, str] | None = field(default=None, repr=False, compare=False)
    """``config`` encoded, with the object it was encoded from (see :func:`encode_record`)."""

    def info(self, log_path: Path, network: NetworkInfo | None = None) -> ContainerInfo:
        """A snapshot for callers (state copied so they cannot change ours)."""
        return ContainerInfo(
            id=self.config.id,
            name=self.config.name,
            image=self.config.image,
            created_at=self.created_at,
            config=self.config,
            state=ContainerState.from_dict(self.state.to_dict()),
            log_path=log_path,
            network=network,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerRecord:
        """Inverse of :func:`encode_record` (its JSON, decoded)."""
        return cls(
            config=ContainerSpec.from_dict(data["config"]),
            state=ContainerState.from_dict(data["state"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            cgroups_path=str(data.get("cgroups_path", "")),
            conmon_pid=int(data.get("conmon_pid", 0)),
        )


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename (blocking), 0644, in a directory that
    must exist (a removed container's is never made again). Not synced: it is on the
    start path; a power cut may lose the last write (a container dir left without its
    record is discarded by `recover`)."""
    write_file_atomic(path, data, durable=False, make_parent=False)


def encode_record(record: ContainerRecord) -> bytes:
    """``container.json``'s content: the config, state, creation time, cgroups path and
    conmon's pid (what :meth:`ContainerRecord.from_dict` reads).

    Compact, which keeps ``json`` on its C encoder (an ``indent`` makes it encode in
    Python). The config (most of the record, and ``asdict`` is slow) is encoded once per
    config object: a :class:`ContainerSpec` is frozen and replaced whole when it changes
    (``rename``, ``set_endpoint``), so a start's and an exit's saves encode only the rest.
    """
    cached = record.config_json
    if cached is None or cached[0] is not record.config:
        cached = (record.config, json.dumps(record.config.to_dict(), separators=(",", ":")))
        record.config_json = cached
    rest = {
        "state": record.state.to_dict(),
        "created_at": record.created_at.isoformat(),
        "cgroups_path": record.cgroups_path,
        "conmon_pid": record.conmon_pid,
    }
    return f'{{"config":{cached[1]},{json.dumps(rest, separators=(",", ":"))[1:]}'.encode()


async def save_record(cdir: ContainerDir, record: ContainerRecord) -> None:
    """Persist ``record`` atomically."""
    await asyncio.to_thread(write_atomic, cdir.record, encode_record(record))


def load_record(cdir: ContainerDir) -> ContainerRecord | None:
    """Read a record back (blocking); ``None`` when missing or unreadable."""
    try:
        return ContainerRecord.from_dict(json.loads(cdir.record.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
