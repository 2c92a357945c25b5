"""Bounds of the agent session, one copy for both ends.

The controller never sends a node a message it could not take, an agent refuses
a set larger than it would run, and a task status carries bounded text, so a
report always fits in the etcd transaction that records it.
"""

from __future__ import annotations

from dockyard.common.validation import MAX_REF_LENGTH
from dockyard.v1.dispatcher_pb2 import AssignmentSet, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus

__all__ = [
    "MAX_ASSIGNED_TASKS",
    "MAX_SESSION_MESSAGE_BYTES",
    "MAX_STATUS_TEXT",
    "assignment_set_problem",
    "clip_status",
    "clip_text",
    "status_report_problem",
]

MAX_SESSION_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest message of a session, either way: the agent's gRPC receive limit, and
the most the controller sends (an assignment set carries secrets of up to 500 KiB)."""
MAX_ASSIGNED_TASKS = 10_000
"""The most tasks one assignment set may hold."""
MAX_STATUS_TEXT = 4096
"""Characters of a status's message or error (an agent clips longer ones)."""
_MAX_ADDRESS = 64  # an IPv6 address with a zone fits


def clip_text(text: str, limit: int = MAX_STATUS_TEXT) -> str:
    """`text` cut to `limit` characters, with a mark that it was cut."""
    if len(text) <= limit:
        return text
    kept = limit - 48  # room for the mark
    return f"{text[:kept]}... ({len(text) - kept} characters cut)"


def clip_status(status: TaskStatus) -> None:
    """Clip a status's message and error in place (an agent reports them so)."""
    status.message = clip_text(status.message)
    status.error = clip_text(status.error)


def assignment_set_problem(assignments: AssignmentSet) -> str | None:
    """Why an agent must refuse a set, or None to take it."""
    if len(assignments.tasks) > MAX_ASSIGNED_TASKS:
        return f"{len(assignments.tasks)} tasks, at most {MAX_ASSIGNED_TASKS} in one set"
    return None


def status_report_problem(report: TaskStatusReport) -> str | None:
    """Why the controller must refuse a task status report, naming the field, or None."""
    status = report.status
    for name, value, limit in (
        ("task_id", report.task_id, MAX_REF_LENGTH),
        ("status.message", status.message, MAX_STATUS_TEXT),
        ("status.error", status.error, MAX_STATUS_TEXT),
        ("status.container_id", status.container_id, MAX_REF_LENGTH),
        ("status.address", status.address, _MAX_ADDRESS),
    ):
        if len(value) > limit:
            return f"{name}: {len(value)} characters, at most {limit}"
    return None
