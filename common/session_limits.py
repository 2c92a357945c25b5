"""Bounds of the agent session, one copy for both ends.

The controller never sends a node a message it could not take, an agent refuses
a set larger than it would run, and a task status carries bounded text, so a
report always fits in the etcd transaction that records it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dockyard.common.validation import MAX_REF_LENGTH
from dockyard.v1.dispatcher_pb2 import AssignmentSet, TaskStatusBatch, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus

__all__ = [
    "MAX_ASSIGNED_TASKS",
    "MAX_SESSION_MESSAGE_BYTES",
    "MAX_STATUS_BATCH_BYTES",
    "MAX_STATUS_BATCH_REPORTS",
    "MAX_STATUS_TEXT",
    "assignment_set_problem",
    "clip_status",
    "clip_text",
    "status_batch_problem",
    "status_batches",
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
MAX_STATUS_BATCH_REPORTS = 1024
"""The most reports one TaskStatusBatch may hold (the controller refuses more, whole)."""
MAX_STATUS_BATCH_BYTES = 1024 * 1024
"""About the most bytes an agent puts in one TaskStatusBatch: a quarter of what the
controller's server receives (4 MiB), and a report bounded as `status_report_problem`
says (at most about 33 KiB) always fits."""
_REPORT_OVERHEAD = 4  # a repeated field's tag and length prefix, at most


def clip_text(text: str, limit: int = MAX_STATUS_TEXT) -> str:
    """`text` cut to `limit` characters, with a mark that it was cut."""
    if len(text) <= limit:
        return text
    kept = limit - 48  # room for the mark
    return f"{text[:kept]}... ({len(text) - kept} characters cut)"


def clip_status(status: TaskStatus) -> None:
    """Clip a status's message and error in place (an agent reports them so); a text
    within the limit is not rewritten (every report of a task goes through here)."""
    if len(status.message) > MAX_STATUS_TEXT:
        status.message = clip_text(status.message)
    if len(status.error) > MAX_STATUS_TEXT:
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


def status_batches(
    reports: Sequence[TaskStatusReport],
    max_reports: int = MAX_STATUS_BATCH_REPORTS,
    max_bytes: int = MAX_STATUS_BATCH_BYTES,
) -> Iterator[TaskStatusBatch]:
    """`reports` in order, cut into batches of at most `max_reports` reports and
    `max_bytes` bytes (a report larger than that alone goes alone)."""
    chunk: list[TaskStatusReport] = []
    size = 0
    for report in reports:
        cost = report.ByteSize() + _REPORT_OVERHEAD
        if chunk and (len(chunk) >= max_reports or size + cost > max_bytes):
            yield TaskStatusBatch(reports=chunk)
            chunk, size = [], 0
        chunk.append(report)
        size += cost
    if chunk:
        yield TaskStatusBatch(reports=chunk)


def status_batch_problem(batch: TaskStatusBatch) -> str | None:
    """Why the controller must refuse a batch whole, or None to take its reports (each
    still checked by `status_report_problem`)."""
    if len(batch.reports) > MAX_STATUS_BATCH_REPORTS:
        return f"{len(batch.reports)} reports, at most {MAX_STATUS_BATCH_REPORTS} in one batch"
    return None
