"""The agent's status reporter folds a task's steps into its newest status, never loses
a terminal one, and the session sends them in bounded batches (single reports to a
controller that does not take batches)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.agent.tasks.reporting import StatusReporter
from dockyard.common.session_limits import MAX_STATUS_TEXT, clip_status, status_batches
from dockyard.v1.dispatcher_pb2 import AgentMessage, TaskStatusReport
from dockyard.v1.types_pb2 import NodeDescription, TaskStatus
from tests.worker.conftest import FakeSession

State = TaskStatus.State
WINDOW = 0.5  # long: the steps below fall within one window however loaded the machine


@dataclass
class CallingSession(FakeSession):
    """A fake session that also records each `report_many` call (one send)."""

    calls: list[list[str]] = field(default_factory=list)

    def report_many(self, reports: Sequence[TaskStatusReport]) -> bool:
        sent = super().report_many(reports)
        if sent:
            self.calls.append([f"{r.task_id}:{State.Name(r.status.state)}" for r in reports])
        return sent


@pytest.fixture
async def held() -> AsyncIterator[tuple[CallingSession, dict[str, TaskStatus], StatusReporter]]:
    session = CallingSession()
    session.connect()
    statuses: dict[str, TaskStatus] = {}
    reporter = StatusReporter(session, lambda: statuses, WINDOW)
    running = asyncio.create_task(reporter.run())
    try:
        yield session, statuses, reporter
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def step(
    reporter: StatusReporter, statuses: dict[str, TaskStatus], task_id: str, state: int
) -> None:
    """What the worker does when a task moves on."""
    statuses[task_id] = TaskStatus(state=state)
    reporter.send(task_id, statuses[task_id])


async def test_steps_within_the_window_fold_into_the_newest(
    held: tuple[CallingSession, dict[str, TaskStatus], StatusReporter],
) -> None:
    session, statuses, reporter = held
    step(reporter, statuses, "quiet", State.RUNNING)  # after a quiet window: sent at once
    await asyncio.sleep(0.01)
    assert session.calls == [["quiet:RUNNING"]]
    for task_id in ("t1", "t2", "t3"):  # three tasks start within the window
        for state in (State.ACCEPTED, State.PREPARING, State.STARTING, State.RUNNING):
            step(reporter, statuses, task_id, state)
            await asyncio.sleep(0)
    await asyncio.sleep(2 * WINDOW)
    assert session.calls[1:] == [["t1:RUNNING", "t2:RUNNING", "t3:RUNNING"]]
    assert reporter.folded == 9


async def test_a_step_before_running_waits_for_a_newer_one_then_goes_anyway() -> None:
    session = CallingSession()
    session.connect()
    statuses: dict[str, TaskStatus] = {}
    reporter = StatusReporter(session, lambda: statuses, window=0.05, progress_wait=0.5)
    running = asyncio.create_task(reporter.run())
    try:
        step(reporter, statuses, "quick", State.ACCEPTED)
        step(reporter, statuses, "slow", State.ACCEPTED)
        await asyncio.sleep(0.1)
        step(reporter, statuses, "quick", State.PREPARING)
        step(reporter, statuses, "slow", State.PREPARING)  # pulling, say
        await asyncio.sleep(0.1)
        assert session.calls == []  # steps before RUNNING wait
        step(reporter, statuses, "quick", State.RUNNING)
        await asyncio.sleep(0.15)
        assert session.calls == [["quick:RUNNING"]]  # ACCEPTED, PREPARING folded away
        for _ in range(50):
            if session.states("slow"):
                break
            await asyncio.sleep(0.05)
        assert session.states("slow") == ["PREPARING"]  # sent anyway, once it waited
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_terminal_status_is_never_folded_away(
    held: tuple[CallingSession, dict[str, TaskStatus], StatusReporter],
) -> None:
    session, statuses, reporter = held
    step(reporter, statuses, "warm", State.RUNNING)  # the window starts
    await asyncio.sleep(0.01)
    step(reporter, statuses, "t1", State.RUNNING)
    step(reporter, statuses, "t1", State.FAILED)
    reporter.send("t1", TaskStatus(state=State.RUNNING))  # a late, older step
    await asyncio.sleep(2 * WINDOW)
    assert session.states("t1") == ["FAILED"]


async def test_what_is_held_through_an_outage_is_resent_with_every_task(
    held: tuple[CallingSession, dict[str, TaskStatus], StatusReporter],
) -> None:
    session, statuses, reporter = held
    step(reporter, statuses, "warm", State.RUNNING)
    await asyncio.sleep(0.01)
    step(reporter, statuses, "gone", State.COMPLETE)  # held for the next send...
    session.disconnect()  # ...which finds the session down
    del statuses["gone"]  # and the task leaves the node meanwhile
    step(reporter, statuses, "t1", State.RUNNING)
    await asyncio.sleep(2 * WINDOW)
    assert "gone" not in {r.task_id for r in session.reports}
    session.connect("s2")
    for _ in range(50):
        if session.states("gone"):
            break
        await asyncio.sleep(0.02)
    assert session.states("gone") == ["COMPLETE"]
    assert session.states("t1") == ["RUNNING"]
    assert session.states("warm") == ["RUNNING", "RUNNING"]  # the resync sends all


def big_report(task_id: str) -> TaskStatusReport:
    status = TaskStatus(state=State.FAILED, message="m" * 10**6, error="e" * 10**6)
    clip_status(status)  # as an agent reports it
    return TaskStatusReport(task_id=task_id, status=status)


def test_batches_are_bounded_in_reports_and_bytes() -> None:
    small = [
        TaskStatusReport(task_id=f"t{i}", status=TaskStatus(state=State.RUNNING))
        for i in range(2500)
    ]
    batches = list(status_batches(small, max_reports=1000))
    assert [len(b.reports) for b in batches] == [1000, 1000, 500]
    big = [big_report(f"b{i}") for i in range(100)]
    batches = list(status_batches(big, max_bytes=100_000))
    assert all(b.ByteSize() <= 100_000 for b in batches)
    assert [r.task_id for b in batches for r in b.reports] == [r.task_id for r in big]
    assert big[0].ByteSize() > MAX_STATUS_TEXT  # so a batch holds only a few
    alone = list(status_batches([big_report("x")], max_bytes=100))  # too big: alone
    assert [len(b.reports) for b in alone] == [1]


@pytest.mark.parametrize("batches", [True, False])
async def test_the_session_sends_batches_only_to_a_controller_that_takes_them(
    batches: bool,
) -> None:
    session = ControllerSession(["127.0.0.1:1"], NodeIdentity("n" * 20, "node"), NodeDescription)
    assert not session.report_many([TaskStatusReport(task_id="t0")])  # not connected
    outbox: asyncio.Queue[AgentMessage] = asyncio.Queue()
    session._outbox = outbox  # as when a session is accepted
    session.status.accepts_status_batches = batches
    reports = [big_report(f"t{i}") for i in range(200)]
    assert session.report_many(reports)
    sent = [outbox.get_nowait() for _ in range(outbox.qsize())]
    if batches:
        assert {m.WhichOneof("message") for m in sent} == {"task_statuses"}
        assert 1 < len(sent) < len(reports)
        assert all(m.ByteSize() <= 1024 * 1024 + 64 for m in sent)
        assert [r.task_id for m in sent for r in m.task_statuses.reports] == [
            r.task_id for r in reports
        ]
    else:
        assert [m.WhichOneof("message") for m in sent] == ["task_status"] * len(reports)
