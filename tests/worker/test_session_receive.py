"""The agent's side of the session stream: what it does with each message it reads, and
that a controller gone silent ends the session (after `MISSED_ACKS` heartbeat periods)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession, SessionLost, _ReadDeadline
from dockyard.v1.dispatcher_pb2 import (
    AssignmentSet,
    DispatcherMessage,
    HeartbeatAck,
)
from dockyard.v1.types_pb2 import NodeDescription


class _Call:
    """A stream whose reads return the queued messages, then wait (the controller went
    silent) or end (`None`: the controller closed it)."""

    def __init__(self, *messages: Any) -> None:
        self._messages = list(messages)

    async def read(self) -> Any:
        if not self._messages:
            await asyncio.Event().wait()
        return self._messages.pop(0)


def _session(received: list[AssignmentSet], apply_seconds: float = 0.0) -> ControllerSession:
    """A session whose sets go to `received`, each after `apply_seconds` (applying it)."""

    async def on_assignments(assignments: AssignmentSet) -> None:
        if apply_seconds:
            await asyncio.sleep(apply_seconds)
        received.append(assignments)

    session = ControllerSession(
        ["127.0.0.1:1"], NodeIdentity("n" * 20, "node"), NodeDescription, on_assignments
    )
    session.status.heartbeat_period = 0.1  # a silent controller is given max(1 s, 3 periods)
    return session


async def test_a_silent_controller_ends_the_session_after_its_deadline() -> None:
    received: list[AssignmentSet] = []
    session = _session(received)
    session._sent[1] = 0.0
    call = _Call(
        DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=1)),
        DispatcherMessage(assignments=AssignmentSet(full=True, version=3)),
    )
    async with asyncio.timeout(10):  # the session's own deadline is 1 s
        with pytest.raises(TimeoutError):
            await session._receive(call)  # type: ignore[arg-type]
    assert [a.version for a in received] == [3]
    assert session._held_version == 3 and session.status.rtt_seconds > 0
    assert 1 not in session._sent  # acked


async def test_reads_schedule_no_timer_each() -> None:
    """One deadline timer for the session's reads, not one per message (a hollow fleet
    reads thousands a second)."""
    session = _session([])
    acks = [DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=n)) for n in range(200)]
    loop = asyncio.get_running_loop()
    scheduled = 0
    call_at = loop.call_at

    def counting_call_at(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal scheduled
        scheduled += 1
        return call_at(*args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        with pytest.raises(SessionLost):
            await session._receive(_Call(*acks, None))  # type: ignore[arg-type]
    finally:
        del loop.call_at
    assert scheduled <= 2


@pytest.mark.parametrize("apply_seconds", [0.0, 1.5])
async def test_a_closed_stream_ends_the_session_after_its_set_is_applied(
    apply_seconds: float,
) -> None:
    """A closed stream ends the session once the set before it is applied. Only a read
    waits against the deadline: a set applied for longer than it (1.5 s against 1 s; a
    slow disk, say) does not end the session first."""
    received: list[AssignmentSet] = []
    session = _session(received, apply_seconds)
    call = _Call(DispatcherMessage(assignments=AssignmentSet(full=True, version=2)), None)
    async with asyncio.timeout(10):
        with pytest.raises(SessionLost):
            await session._receive(call)  # type: ignore[arg-type]
    assert [a.version for a in received] == [2]


async def test_a_read_that_ends_as_its_deadline_fires_is_applied_to_its_end() -> None:
    """The deadline's check found the read over its limit in the loop's turn in which the
    read ended: the message is applied whole and the session goes on."""
    applied = False
    async with asyncio.timeout(None) as scope:
        deadline = _ReadDeadline(scope, lambda: 1.0)
        deadline.reading()
        deadline._since = asyncio.get_running_loop().time() - 5  # waited past the limit
        deadline._check()  # the timer fires ...
        deadline.read()  # ... in the turn in which the read ended
        await asyncio.sleep(0.01)  # the message being applied
        applied = True
        deadline.close()
    assert applied
