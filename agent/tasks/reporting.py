"""Task statuses to the controller, through the session.

A status that cannot be sent (the session is down) is not queued: once the session is
back, the current status of every task is sent once ("resync"), which is all the
controller needs. A new session gets that resync too, on its first assignment set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Protocol

from dockyard.common.states import TaskState
from dockyard.v1.dispatcher_pb2 import TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus

__all__ = ["RETRY_DELAY", "SessionLike", "StatusReporter"]

RETRY_DELAY = 0.2
"""Seconds between resync attempts while the session is connected but not accepting."""


class SessionInfo(Protocol):
    @property
    def session_id(self) -> str: ...


class SessionLike(Protocol):
    """What the worker needs of `dockyard.agent.session.ControllerSession`."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def status(self) -> SessionInfo: ...

    def report(self, report: TaskStatusReport) -> bool: ...


class StatusReporter:
    """Sends statuses; `run` (a loop of the worker's task group) resends after an outage.

    Args:
        session: where reports go; `report` returns False while disconnected.
        statuses: the current status of every task the node holds.
    """

    def __init__(
        self, session: SessionLike, statuses: Callable[[], Mapping[str, TaskStatus]]
    ) -> None:
        self.session = session
        self._statuses = statuses
        self._synced_session = ""
        self._unsent = asyncio.Event()

    def send(self, task_id: str, status: TaskStatus) -> None:
        """Report one change now, or mark everything for a resync."""
        if self._unsent.is_set():
            return  # the resync sends it
        if not self.session.report(TaskStatusReport(task_id=task_id, status=status)):
            self._unsent.set()

    def resend_all(self) -> None:
        """Send every status again once connected (after an agent restart)."""
        self._unsent.set()

    def resync(self) -> None:
        """Once per session: send the current status of every task."""
        session_id = self.session.status.session_id
        if not session_id or not self.session.connected.is_set():
            return
        if session_id == self._synced_session and not self._unsent.is_set():
            return
        for task_id, status in self._statuses().items():
            if status.state < TaskState.ACCEPTED:
                continue  # nothing observed yet
            if not self.session.report(TaskStatusReport(task_id=task_id, status=status)):
                self._unsent.set()
                return
        self._synced_session = session_id
        self._unsent.clear()

    async def run(self) -> None:
        """Forever: when statuses are unsent, wait for the session and resync."""
        while True:
            await self._unsent.wait()
            await self.session.connected.wait()
            self._synced_session = ""
            self.resync()
            if self._unsent.is_set():
                await asyncio.sleep(RETRY_DELAY)  # connected but not accepting yet
