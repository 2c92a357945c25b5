"""Task statuses to the controller, through the session, folded.

A task moves through several steps in a few milliseconds (ACCEPTED, PREPARING,
STARTING, RUNNING); each used to be one message on the session. The reporter keeps
only each task's newest status and sends what is due at most once per `FOLD_WINDOW`
(at once after a quiet window), all tasks' statuses in one call to the session, which
sends them as bounded batches to a controller that takes them (swarmkit's agent folds
its reports per task the same way). RUNNING and every later status is due at the next
send; a step before RUNNING waits up to `PROGRESS_WAIT` for a newer one, so a task that
starts quickly is reported once. A status is the task's whole observed state, and agents
move tasks forward only, so the newest is all the controller needs: a step folded away
is one the controller would have overwritten. A held status is only ever replaced by
one at least as far on (a terminal one stays).

A status that cannot be sent (the session is down) is not queued: once the session is
back, the current status of every task (and those held, of tasks removed since) is sent
once ("resync"), which is all the controller needs. A new session gets that resync too,
on its first assignment set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from dockyard.common.states import TaskState
from dockyard.v1.dispatcher_pb2 import TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus

__all__ = ["FOLD_WINDOW", "PROGRESS_WAIT", "RETRY_DELAY", "SessionLike", "StatusReporter"]

RETRY_DELAY = 0.2
"""Seconds between resync attempts while the session is connected but not accepting."""
FOLD_WINDOW = 0.1
"""Seconds between two sends of the statuses held: the most a RUNNING or final status
waits, and the window within which a task's steps fold into its newest."""
PROGRESS_WAIT = 0.5
"""Seconds a step before RUNNING (ACCEPTED, PREPARING, STARTING) is held for a newer one
before it is sent anyway: a task that starts quickly is reported once, RUNNING; one
pulling an image for minutes shows PREPARING after half a second."""


class SessionInfo(Protocol):
    @property
    def session_id(self) -> str: ...


class SessionLike(Protocol):
    """What the worker needs of `dockyard.agent.session.ControllerSession`."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def status(self) -> SessionInfo: ...

    def report_many(self, reports: Sequence[TaskStatusReport]) -> bool: ...


class StatusReporter:
    """Folds and sends statuses; `run` (a loop of the worker's task group) sends what
    is held once per window, and resends everything after an outage.

    Args:
        session: where reports go; `report_many` returns False while disconnected.
        statuses: the current status of every task the node holds.
        window: seconds between two sends (`FOLD_WINDOW`); 0 sends each status as it
            comes, one report each, without `run` (nothing is folded).
        progress_wait: seconds a step before RUNNING waits for a newer one
            (`PROGRESS_WAIT`).
    """

    def __init__(
        self,
        session: SessionLike,
        statuses: Callable[[], Mapping[str, TaskStatus]],
        window: float = FOLD_WINDOW,
        progress_wait: float = PROGRESS_WAIT,
    ) -> None:
        self.session = session
        self._statuses = statuses
        self._window = window
        self._progress_wait = progress_wait
        self._synced_session = ""
        self._unsent = asyncio.Event()
        # At most one status per task: bounded by the tasks the node holds (and those
        # removed since the last send).
        self._held: dict[str, TaskStatus] = {}
        self._since: dict[str, float] = {}  # task ID -> when its held status was first held
        self._holding = asyncio.Event()
        self.folded = 0
        """Statuses replaced by a newer one of their task before they were sent."""

    def send(self, task_id: str, status: TaskStatus) -> None:
        """Hold a task's newest status for the next send (now, with no window), or
        mark everything for a resync."""
        if self._unsent.is_set():
            return  # the resync sends it
        if self._window <= 0:
            self._send([TaskStatusReport(task_id=task_id, status=status)])
            return
        held = self._held.get(task_id)
        if held is not None:
            if status.state < held.state:
                return  # never back: a terminal status held stays
            self.folded += 1
        else:
            self._since[task_id] = time.monotonic()
        self._held[task_id] = status
        self._holding.set()

    def flush(self) -> None:
        """Send the statuses held that are due: RUNNING and later ones, and earlier
        steps held `progress_wait` already."""
        self._holding.clear()
        if self._unsent.is_set():
            return  # kept for the resync
        due = self._due()
        if self._held:
            self._holding.set()  # steps still held: look again after the window
        if not due:
            return
        if not self.session.report_many([TaskStatusReport(task_id=t, status=s) for t, s in due]):
            self._unsent.set()
            for task_id, status in due:  # for the resync, behind newer ones
                self._held.setdefault(task_id, status)
                self._since.setdefault(task_id, time.monotonic())

    def _due(self) -> list[tuple[str, TaskStatus]]:
        """Take the due statuses out of those held."""
        oldest = time.monotonic() - self._progress_wait
        due = [
            (task_id, status)
            for task_id, status in self._held.items()
            if status.state >= TaskState.RUNNING or self._since[task_id] <= oldest
        ]
        for task_id, _ in due:
            del self._held[task_id]
            del self._since[task_id]
        return due

    def _send(self, reports: list[TaskStatusReport]) -> None:
        if not self.session.report_many(reports):
            self._unsent.set()

    def resend_all(self) -> None:
        """Send every status again once connected (after an agent restart)."""
        self._unsent.set()

    def resync(self) -> None:
        """Once per session: send the current status of every task (and those held of
        tasks removed since)."""
        session_id = self.session.status.session_id
        if not session_id or not self.session.connected.is_set():
            return
        if session_id == self._synced_session and not self._unsent.is_set():
            return
        current = {**self._held, **self._statuses()}
        reports = [
            TaskStatusReport(task_id=task_id, status=status)
            for task_id, status in current.items()
            if status.state >= TaskState.ACCEPTED  # else nothing observed yet
        ]
        if not self.session.report_many(reports):
            self._unsent.set()
            return
        self._held.clear()
        self._since.clear()
        self._holding.clear()
        self._synced_session = session_id
        self._unsent.clear()

    async def run(self) -> None:
        """Forever: send what is held once per window, and resync after an outage."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._resyncs(), name="reporter-resyncs")
            if self._window > 0:
                group.create_task(self._sends(), name="reporter-sends")

    async def _sends(self) -> None:
        """Send at once what comes after a quiet window, then at most once a window."""
        while True:
            await self._holding.wait()
            self.flush()
            await asyncio.sleep(self._window)

    async def _resyncs(self) -> None:
        """When statuses are unsent, wait for the session and resync."""
        while True:
            await self._unsent.wait()
            await self.session.connected.wait()
            self._synced_session = ""
            self.resync()
            if self._unsent.is_set():
                await asyncio.sleep(RETRY_DELAY)  # connected but not accepting yet
