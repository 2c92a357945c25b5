"""The agent skips a heartbeat while messages flow both ways, to a controller that takes
any message as a beat (SessionAccepted.beats_on_any_message): a beat and its ack would
tell neither side anything new. It beats as before when it only sends, only receives,
or the controller did not say so (an older one would take the node for silent)."""

from __future__ import annotations

import asyncio
import contextlib

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.v1.dispatcher_pb2 import (
    AgentMessage,
    DispatcherMessage,
    HeartbeatAck,
    TaskStatusReport,
)
from dockyard.v1.types_pb2 import NodeDescription, TaskStatus

PERIOD = 0.05


class _Flowing:
    """A stream the controller writes to every PERIOD / 5 seconds (`flowing`), or never."""

    def __init__(self, flowing: bool) -> None:
        self._flowing = flowing

    async def read(self) -> DispatcherMessage:
        if not self._flowing:
            await asyncio.Event().wait()
        await asyncio.sleep(PERIOD / 5)
        return DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=0))


async def _beats(any_message: bool, sending: bool, receiving: bool) -> tuple[int, int]:
    """Heartbeats queued and skipped over 12 periods of such traffic."""
    session = ControllerSession(["127.0.0.1:1"], NodeIdentity("n" * 20, "node"), NodeDescription)
    session.status.heartbeat_period = PERIOD
    session.status.accepts_status_batches = True
    session.status.beats_on_any_message = any_message
    outbox: asyncio.Queue[AgentMessage] = asyncio.Queue()
    session._outbox = outbox
    report = TaskStatusReport(task_id="t" * 24, status=TaskStatus(state=TaskStatus.RUNNING))

    async def send() -> None:
        while sending:
            session.report_many([report])
            await asyncio.sleep(PERIOD / 5)

    async with asyncio.TaskGroup() as group:
        jobs = [
            group.create_task(session._heartbeats(outbox)),
            group.create_task(send()),
            group.create_task(session._receive(_Flowing(receiving))),  # type: ignore[arg-type]
        ]
        await asyncio.sleep(PERIOD * 12)
        for job in jobs:
            job.cancel()
    beats = 0
    with contextlib.suppress(asyncio.QueueEmpty):
        while True:
            beats += outbox.get_nowait().WhichOneof("message") == "heartbeat"
    return beats, session.status.heartbeats_skipped


async def test_beats_are_skipped_while_messages_flow_both_ways() -> None:
    beats, skipped = await _beats(any_message=True, sending=True, receiving=True)
    assert skipped >= 3 and beats < skipped  # the first goes before anything flowed


async def test_beats_go_as_before_to_a_controller_that_did_not_say_so() -> None:
    beats, skipped = await _beats(any_message=False, sending=True, receiving=True)
    assert skipped == 0 and beats >= 3


async def test_beats_go_when_only_sending_or_only_receiving() -> None:
    for sending, receiving in ((True, False), (False, True)):
        beats, skipped = await _beats(any_message=True, sending=sending, receiving=receiving)
        assert skipped == 0 and beats >= 3, (sending, receiving)
