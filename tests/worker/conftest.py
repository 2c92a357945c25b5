"""Helpers for the worker tests: a fake session and task builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dockyard.v1.dispatcher_pb2 import AssignmentSet, TaskStatusReport
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import HealthCheck, Task

State = TaskStatus.State


@dataclass
class _Status:
    session_id: str = ""


@dataclass
class FakeSession:
    """Records reports while "connected"; `report` returns False otherwise."""

    reports: list[TaskStatusReport] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    status: _Status = field(default_factory=_Status)

    def connect(self, session_id: str = "s1") -> None:
        self.status.session_id = session_id
        self.connected.set()

    def disconnect(self) -> None:
        self.status.session_id = ""
        self.connected.clear()

    def report(self, report: TaskStatusReport) -> bool:
        if not self.connected.is_set():
            return False
        self.reports.append(report)
        return True

    def report_many(self, reports: Sequence[TaskStatusReport]) -> bool:
        return all([self.report(r) for r in reports])

    def states(self, task_id: str) -> list[str]:
        return [State.Name(r.status.state) for r in self.reports if r.task_id == task_id]

    def last(self, task_id: str) -> TaskStatus:
        return [r.status for r in self.reports if r.task_id == task_id][-1]


def make_task(
    task_id: str,
    command: list[str] | None = None,
    desired: int = State.RUNNING,
    healthcheck: HealthCheck | None = None,
    image: str = "busybox:latest",
    slot: int = 1,
    grace: float = 0.0,
) -> Task:
    task = Task(
        id=task_id,
        service_id="svc" + task_id,
        service_name="web",
        slot=slot,
        node_id="node0123456789abcdef",
        desired_state=desired,
    )
    task.status.state = State.ASSIGNED
    container = task.spec.container
    container.image = image
    container.command.extend(command or [])
    container.stop_grace_seconds = grace
    if healthcheck is not None:
        container.healthcheck.CopyFrom(healthcheck)
    return task


def full_set(*tasks: Task) -> AssignmentSet:
    return AssignmentSet(full=True, tasks=list(tasks))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
