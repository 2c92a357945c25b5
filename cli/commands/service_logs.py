"""`dockyard service logs`: each task's container output, read from its node's agent.

The controller does not relay logs: the CLI lists the service's tasks, finds each
task's node (its `description.api_address`) and streams Containers.Logs from that
agent, prefixing every line with `name.slot.taskid@node | `.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from dockyard.cli.client import CliError, Target, call, stream

__all__ = ["log_prefix", "service_logs"]


def log_prefix(task: Any, node_name: str) -> str:
    """`web.1.0123456789ab@node-1 | ` (global tasks: `web.<node id>.<task>@node`)."""
    from dockyard.cli.commands.service_view import task_name

    return f"{task_name(task)}.{task.id[:12]}@{node_name} | "


class _Writer:
    """Whole lines, one writer at a time, each with its task's prefix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, prefix: str, stream_name: str, data: bytes) -> None:
        out = sys.stderr.buffer if stream_name == "stderr" else sys.stdout.buffer
        lines = data.splitlines(keepends=True)
        text = b"".join(
            prefix.encode() + (line if line.endswith(b"\n") else line + b"\n") for line in lines
        )
        with self._lock:
            out.write(text)
            out.flush()


def _request(
    container_id: str, follow: bool, tail: str, timestamps: bool, since: float | None = None
) -> Any:
    from dockyard.v1.containers_pb2 import LogsRequest

    request = LogsRequest(container=container_id, follow=follow, timestamps=timestamps)
    if tail != "all":
        if not tail.lstrip("-").isdigit():
            raise CliError(f"invalid --tail {tail!r}: a number or 'all'")
        if int(tail) >= 0:
            request.tail, request.has_tail = int(tail), True
    if since is not None:
        request.since.FromNanoseconds(int(since * 1e9))
    return request


def _stream_one(
    agent: Target, prefix: str, request: Any, writer: _Writer, timestamps: bool, errors: list[str]
) -> None:
    import grpc

    from dockyard.cli.client import rpc_code
    from dockyard.cli.commands.container_run import containers_stub
    from dockyard.cli.commands.containers import format_timestamp

    try:
        for line in stream(agent, containers_stub, "Logs", request, what="agent"):
            data = line.data
            if timestamps:
                data = format_timestamp(line.timestamp).encode() + b" " + data
            writer.write(prefix, line.stream, data)
    except CliError as exc:
        # An ended task's container may be gone already (its agent removed it): no logs left.
        if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
            errors.append(f"{prefix.split(' |', maxsplit=1)[0]}: {exc.message}")


def service_logs(
    target: Target,
    ref: str,
    *,
    follow: bool,
    tail: str,
    timestamps: bool,
    since: float | None = None,
    raw: bool = False,
    label: str = "",
) -> bool:
    """Every task's output; `raw`: without the task prefix; `label`: each line led by
    the target's name (several targets at once). Returns whether nothing could be read."""
    from dockyard.cli.commands.service_wait import control_stub
    from dockyard.v1.control_pb2 import ListNodesRequest, ListTasksRequest

    _request("", follow, tail, timestamps)  # a bad --tail fails before any request
    lead = f"{label} " if label else ""
    tasks = [
        t
        for t in call(
            target,
            control_stub,
            "ListTasks",
            ListTasksRequest(services=[ref], include_history=True),
        ).tasks
        if t.status.container_id and t.node_id
    ]
    nodes = {n.id: n for n in call(target, control_stub, "ListNodes", ListNodesRequest()).nodes}
    writer, errors = _Writer(), []
    jobs = []
    for task in sorted(tasks, key=lambda t: (t.slot, t.node_id, t.meta.created_at.seconds)):
        node = nodes.get(task.node_id)
        name = node.spec.name if node else task.node_id[:12]
        if node is None or not node.description.api_address:
            where = log_prefix(task, name).split(" |", maxsplit=1)[0]
            errors.append(f"{where}: the node's agent API address is unknown")
            continue
        # The agent API address is the agent's own claim: its certificate must be the
        # node's (its ID, which the controller chose), whatever answers there.
        agent = Target(
            node.description.api_address, f"node {name}", target.tls, server_name=node.id
        )
        request = _request(task.status.container_id, follow, tail, timestamps, since)
        jobs.append((agent, lead + ("" if raw else log_prefix(task, name)), request))
    try:
        if not follow:
            for agent, prefix, request in jobs:
                _stream_one(agent, prefix, request, writer, timestamps, errors)
        else:
            threads = [
                threading.Thread(
                    target=_stream_one,
                    daemon=True,
                    args=(agent, prefix, request, writer, timestamps, errors),
                )
                for agent, prefix, request in jobs
            ]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                time.sleep(0.2)
    except KeyboardInterrupt:
        sys.exit(130)
    for error in errors:
        click.echo(f"dockyard: {lead.replace(' ', ': ')}{error}", err=True)
    return bool(errors and not jobs)
