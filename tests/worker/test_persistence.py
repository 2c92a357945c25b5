"""worker.json: saved and loaded again, never half-written, never older than on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from google.protobuf import json_format

from dockyard.agent.tasks.persistence import STATE_FILE, SavedTask, StateFile
from dockyard.v1.types_pb2 import TaskStatus
from tests.worker.conftest import make_task

# A process whose files may not grow past 4 KiB: its write of worker.json is cut there
# (EFBIG), as a full disk or a crash would cut it.
CUT_WRITER = """
import resource, signal, sys
from pathlib import Path
from dockyard.agent.tasks.persistence import SavedTask, StateFile
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import Task

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
state = StateFile(Path(sys.argv[1]))
tasks = [SavedTask(Task(id=f"big{i:04d}", service_name="x" * 200), TaskStatus())
         for i in range(200)]
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    state.write(state.snapshot(tasks))
except OSError as exc:
    print(exc.errno)
    sys.exit(3)
"""


def saved(task_id: str, state: int = TaskStatus.RUNNING) -> SavedTask:
    return SavedTask(
        make_task(task_id), TaskStatus(state=state, container_id="c-" + task_id), "c-" + task_id
    )


def test_a_snapshot_is_loaded_back(tmp_path: Path) -> None:
    state = StateFile(tmp_path / STATE_FILE)
    state.write(state.snapshot([saved("t1"), saved("t2", TaskStatus.COMPLETE)]))
    loaded = StateFile(tmp_path / STATE_FILE).load()
    assert [(s.task.id, s.status.state, s.container_id) for s in loaded] == [
        ("t1", TaskStatus.RUNNING, "c-t1"),
        ("t2", TaskStatus.COMPLETE, "c-t2"),
    ]
    assert loaded[0].task.spec.container.image == "busybox:latest"


def test_a_write_cut_in_the_middle_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    before = StateFile(path)
    before.write(before.snapshot([saved("t1")]))
    content = path.read_bytes()
    cut = subprocess.run(
        [sys.executable, "-c", CUT_WRITER, str(path)], capture_output=True, text=True, timeout=60
    )
    assert (cut.returncode, cut.stdout.strip()) == (3, "27"), cut.stderr  # EFBIG
    assert path.read_bytes() == content
    assert [s.task.id for s in StateFile(path).load()] == ["t1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary left


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    state = StateFile(tmp_path / STATE_FILE)
    older = state.snapshot([saved("t1")])
    newer = state.snapshot([saved("t1", TaskStatus.COMPLETE)])
    state.write(newer)
    state.write(older)  # a slow write of an older snapshot, finishing last
    assert state.load()[0].status.state == TaskStatus.COMPLETE


def test_an_unreadable_file_is_logged_and_holds_no_task(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text('{"version": 1, "tasks": [')
    with structlog.testing.capture_logs() as logs:
        assert StateFile(path).load() == []
    assert [e["event"] for e in logs] == ["worker.state_unreadable"]
    path.write_text("[]")  # JSON, but not the shape
    assert StateFile(path).load() == []
    assert StateFile(tmp_path / "missing.json").load() == []


def test_each_snapshot_has_every_change_since_the_last(tmp_path: Path) -> None:
    """Entries are encoded once per change: a status replaced, one changed in place, a
    new container alone, a task gone and one added all reach the next snapshot."""
    state = StateFile(tmp_path / STATE_FILE)
    first, second = saved("t1"), saved("t2")
    third = SavedTask(make_task("t3"), TaskStatus(state=TaskStatus.RUNNING), "c-t3")
    state.write(state.snapshot([first, second, third, saved("t5")]))
    second.status.exit_code = 7  # changed in place: the same message object
    replaced = SavedTask(first.task, TaskStatus(state=TaskStatus.COMPLETE), "c-other")
    moved = SavedTask(third.task, third.status, "c-t3-new")  # only the container changed
    state.write(state.snapshot([replaced, second, moved, saved("t4")]))
    loaded = {s.task.id: s for s in StateFile(tmp_path / STATE_FILE).load()}
    assert sorted(loaded) == ["t1", "t2", "t3", "t4"]
    assert (loaded["t1"].status.state, loaded["t1"].container_id) == (
        TaskStatus.COMPLETE,
        "c-other",
    )
    assert loaded["t2"].status.exit_code == 7
    assert loaded["t3"].container_id == "c-t3-new"
    assert loaded["t4"].status.state == TaskStatus.RUNNING


def test_a_status_change_converts_only_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task goes through four or more statuses; its spec (most of an entry) is
    converted to JSON once per change of the task, not at every status."""
    converted: list[str] = []
    real = json_format.MessageToDict

    def spy(message: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        converted.append(type(message).__name__)
        return real(message, *args, **kwargs)

    monkeypatch.setattr(json_format, "MessageToDict", spy)
    state = StateFile(tmp_path / STATE_FILE)
    task = make_task("t1")
    for step in (TaskStatus.ACCEPTED, TaskStatus.PREPARING, TaskStatus.STARTING):
        state.write(state.snapshot([SavedTask(task, TaskStatus(state=step), "")]))
    running = TaskStatus(state=TaskStatus.RUNNING, container_id="c-t1")
    state.write(state.snapshot([SavedTask(task, running, "c-t1")]))
    assert converted == ["Task"] + ["TaskStatus"] * 4
    task.desired_state = TaskStatus.SHUTDOWN  # the task changed (in place): again
    state.write(state.snapshot([SavedTask(task, running, "c-t1")]))
    assert converted[5:] == ["Task", "TaskStatus"]
    saved_json = json.loads((tmp_path / STATE_FILE).read_text())["tasks"]
    assert saved_json == [{"task": real(task), "status": real(running), "container_id": "c-t1"}]
