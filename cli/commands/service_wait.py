"""Waiting for a service to converge (or a job to finish), showing its progress.

The controller offers no watch for clients, so this polls ListServices and
ListTasks twice a second: a rich bar on a terminal, a line per change otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

import click

from dockyard.cli.client import CliError, Target, call

__all__ = ["ProgressView", "Snapshot", "wait_for_job", "wait_for_service"]

POLL_SECONDS = 0.5


def control_stub(channel: Any) -> Any:
    from dockyard.v1 import control_pb2_grpc

    return control_pb2_grpc.ControlStub(channel)


class ProgressView:
    """One line per change, or one rich bar on a terminal (`rich` loads only then)."""

    def __init__(self, out: TextIO, *, bars: bool | None = None) -> None:
        self.out = out
        self.bars = out.isatty() if bars is None else bars
        self._last = ""
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if self.bars:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("overall progress:"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.description}"),
                console=Console(file=self.out),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, line: str, done: int, total: int) -> None:
        if self._progress is None:
            if line != self._last:
                self._last = line
                click.echo(line, file=self.out)
            return
        if self._task is None:
            self._task = self._progress.add_task(line, total=total)
        self._progress.update(self._task, description=line, completed=done, total=total)


class Snapshot:
    """One poll: the service, its summary counts and its current tasks."""

    def __init__(self, target: Target, service_id: str) -> None:
        from dockyard.v1.control_pb2 import ListServicesRequest, ListTasksRequest

        summaries = call(target, control_stub, "ListServices", ListServicesRequest()).services
        found = [s for s in summaries if s.service.id == service_id]
        if not found:
            raise CliError(f"service {service_id[:12]} was removed while waiting for it")
        self.summary = found[0]
        self.service = self.summary.service
        self.tasks = list(
            call(target, control_stub, "ListTasks", ListTasksRequest(services=[service_id])).tasks
        )

    @property
    def name(self) -> str:
        return str(self.service.spec.name)

    def updated(self) -> int:
        from dockyard.v1.types_pb2 import TaskStatus

        return sum(
            1
            for t in self.tasks
            if t.status.state == TaskStatus.RUNNING
            and t.desired_state == TaskStatus.RUNNING
            and t.spec_version >= self.service.spec_version
        )

    def line(self) -> str:
        from dockyard.cli.commands.service_view import progress_line, update_state

        state = update_state(self.service)
        updating = ""
        if state in ("updating", "rollback_started"):
            verb = "updated" if state == "updating" else "rolled back"
            updating = f"{self.updated()}/{self.summary.desired} {verb}"
        return progress_line(
            self.name,
            self.service.spec.WhichOneof("mode") or "",
            self.tasks,
            self.summary.running,
            self.summary.desired,
            updating,
        )

    def converged(self) -> bool:
        """Every wanted task runs, none is left over, and no update is under way."""
        from dockyard.v1.types_pb2 import TaskStatus
        from dockyard.v1.workloads_pb2 import UpdateStatus

        state = self.service.update_status.state
        if state in (UpdateStatus.UPDATING, UpdateStatus.ROLLBACK_STARTED):
            return False
        wanted = [t for t in self.tasks if t.desired_state == TaskStatus.RUNNING]
        return self.summary.running == self.summary.desired == len(wanted) and all(
            t.status.state == TaskStatus.RUNNING for t in wanted
        )

    def paused(self) -> str | None:
        from dockyard.v1.workloads_pb2 import UpdateStatus

        status = self.service.update_status
        if status.state in (UpdateStatus.PAUSED, UpdateStatus.ROLLBACK_PAUSED):
            what = "update" if status.state == UpdateStatus.PAUSED else "rollback"
            message = status.message or "see `dockyard service ps`"
            if "paused" not in message:
                message = f"{what} paused: {message}"
            return f"{self.name}: {message}"
        return None


def _poll(
    target: Target,
    service_id: str,
    out: TextIO,
    timeout: float | None,
    done: Callable[[Snapshot], bool],
    progress: Callable[[Snapshot], int],
) -> Snapshot:
    deadline = None if not timeout else time.monotonic() + timeout
    snapshot = Snapshot(target, service_id)
    try:
        with ProgressView(out) as view:
            while True:
                view.show(snapshot.line(), progress(snapshot), int(snapshot.summary.desired))
                if done(snapshot):
                    return snapshot
                if deadline is not None and time.monotonic() > deadline:
                    raise CliError(
                        f"{snapshot.name} did not converge within {timeout:g} s "
                        f"({snapshot.summary.running}/{snapshot.summary.desired}); "
                        "it keeps going in the background"
                    )
                time.sleep(POLL_SECONDS)
                snapshot = Snapshot(target, service_id)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped waiting: {snapshot.name} keeps converging in the background"
        ) from None


def wait_for_service(
    target: Target, service_id: str, out: TextIO, timeout: float | None
) -> Snapshot:
    """Until the service converges; CliError when its update pauses or time runs out."""

    def done(snapshot: Snapshot) -> bool:
        message = snapshot.paused()
        if message:
            raise CliError(message)
        return snapshot.converged()

    snapshot = _poll(target, service_id, out, timeout, done, lambda s: int(s.summary.running))
    status = snapshot.service.update_status
    if "update rolled back" in status.message:
        raise CliError(f"{snapshot.name}: {status.message}")
    click.echo(f"{snapshot.name}: converged", file=out)
    return snapshot


def wait_for_job(target: Target, service_id: str, out: TextIO, timeout: float | None) -> Any:
    """Until the job completes (or gives up); returns the final Service record."""
    snapshot = _poll(
        target,
        service_id,
        out,
        timeout,
        lambda s: bool(s.service.job_status.complete),
        lambda s: int(s.service.job_status.succeeded),
    )
    return snapshot.service
