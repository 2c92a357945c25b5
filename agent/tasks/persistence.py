"""`worker.json`: the node's assignment set and the latest status of each task.

After an agent restart the worker resumes every task from here, even when no controller
answers. Every write is atomic (a temporary file in the same directory, fsynced, renamed
over the old one, the directory fsynced), so a write cut in the middle (a crash, a full
disk) leaves the previous file whole. Snapshots carry a sequence number: a slow write of
an older snapshot never replaces a newer one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import json_format

from dockyard.common.statedir import write_private
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task

__all__ = ["STATE_FILE", "SavedTask", "Snapshot", "StateFile"]

log = structlog.get_logger(__name__)

STATE_FILE = "worker.json"
VERSION = 1


@dataclass(frozen=True)
class SavedTask:
    task: Task
    status: TaskStatus
    container_id: str = ""


@dataclass(frozen=True)
class Snapshot:
    sequence: int
    data: bytes
    """The file's content (JSON)."""


class StateFile:
    """Reads and writes one `worker.json`. `snapshot` runs on the event loop, `load` and
    `write` in a thread (they touch the disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sequence = 0
        self._written = 0
        self._lock = threading.Lock()  # a cancelled save may still be writing
        # by task ID: (task, status) serialized, the container ID, the entry's JSON
        self._entries: dict[str, tuple[bytes, bytes, str, str]] = {}
        # by task ID: the task serialized and its JSON (the larger half of an entry)
        self._tasks: dict[str, tuple[bytes, str]] = {}

    def snapshot(self, tasks: Iterable[SavedTask]) -> Snapshot:
        """The tasks as `write` will save them, encoded. A task's entry is encoded once
        per change (what changed is told by its serialized messages, which cost far less
        than the JSON conversion), so a burst of status changes over 100 tasks does not
        convert all 100 on the event loop at every save; and a status change converts
        only the status (a task goes through four or more of them, its spec stays)."""
        self._sequence += 1
        entries: dict[str, tuple[bytes, bytes, str, str]] = {}
        task_jsons: dict[str, tuple[bytes, str]] = {}
        for saved in tasks:
            task_id = saved.task.id
            task, status = saved.task.SerializeToString(), saved.status.SerializeToString()
            cached = self._entries.get(task_id)
            task_json = self._tasks.get(task_id)
            if task_json is None or task_json[0] != task:
                task_json = (task, _to_json(saved.task))
            task_jsons[task_id] = task_json
            if cached is None or cached[:3] != (task, status, saved.container_id):
                entry = _entry(task_json[1], _to_json(saved.status), saved.container_id)
                cached = (task, status, saved.container_id, entry)
            entries[task_id] = cached
        self._entries = entries
        self._tasks = task_jsons
        head = f'{{"version":{VERSION},"sequence":{self._sequence},"tasks":['
        body = head + ",".join(entry[3] for entry in entries.values()) + "]}"
        return Snapshot(self._sequence, body.encode())

    def write(self, snapshot: Snapshot) -> None:
        """Write `snapshot` unless a newer one is on disk already."""
        with self._lock:
            if snapshot.sequence < self._written:
                return
            write_private(self.path, snapshot.data)
            self._written = snapshot.sequence

    def load(self) -> list[SavedTask]:
        """The saved tasks; none when there is no file or it cannot be read (logged)."""
        try:
            data = json.loads(self.path.read_text())
            entries = data.get("tasks", [])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, AttributeError) as exc:
            log.error("worker.state_unreadable", path=str(self.path), error=str(exc))
            return []
        return [_parse(entry) for entry in entries]


def _to_json(message: Task | TaskStatus) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def _entry(task_json: str, status_json: str, container_id: str) -> str:
    """One task's entry, as ``json.dumps`` of its dict with compact separators."""
    return (
        f'{{"task":{task_json},"status":{status_json},"container_id":{json.dumps(container_id)}}}'
    )


def _parse(entry: dict[str, Any]) -> SavedTask:
    task = json_format.ParseDict(entry.get("task", {}), Task(), ignore_unknown_fields=True)
    status = json_format.ParseDict(
        entry.get("status", {}), TaskStatus(), ignore_unknown_fields=True
    )
    if entry.get("container_id") and not status.container_id:
        status.container_id = entry["container_id"]
    return SavedTask(task, status, status.container_id)
