"""The session registry (controller/sessions.py): one session and one outbox per node.

What the leader's loops post to one node never waits for, nor displaces, another
node's messages; a node that stops reading keeps one message of each kind, and its
next read is the newest whole state.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from dockyard.controller import sessions as sessions_module
from dockyard.controller.sessions import AgentSession, SessionRegistry
from dockyard.v1.dispatcher_pb2 import (
    AssignmentSet,
    DispatcherMessage,
    HeartbeatAck,
    NetworkMap,
)
from dockyard.v1.workloads_pb2 import Task


def assignments(task_id: str) -> DispatcherMessage:
    return DispatcherMessage(assignments=AssignmentSet(full=True, tasks=[Task(id=task_id)]))


def opened(registry: SessionRegistry, node_id: str, serial: str = "") -> AgentSession:
    session = AgentSession(f"s-{node_id}", node_id, "ipv4:127.0.0.1:1", serial=serial)
    registry.open(session)
    return session


async def test_a_node_that_never_reads_does_not_hold_up_another() -> None:
    registry = SessionRegistry()
    slow, fast = opened(registry, "slow"), opened(registry, "fast")
    for index in range(1000):
        assert registry.post("slow", assignments(f"slow-{index}"))
        assert registry.post("slow", DispatcherMessage(network=NetworkMap(subnet=f"s{index}")))
        assert registry.post("fast", assignments(f"fast-{index}"))
        message = await asyncio.wait_for(fast.outbox.get(), 1)
        assert message is not None and message.assignments.tasks[0].id == f"fast-{index}"
    assert len(fast.outbox) == 0
    assert len(slow.outbox) == 2  # one set and one map, however many were posted
    assert slow.outbox.superseded == 1998


async def test_a_node_that_reads_again_resyncs_from_the_newest_whole_state() -> None:
    registry = SessionRegistry()
    session = opened(registry, "n1")
    registry.post("n1", DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=1)))
    for index in range(500):
        registry.post("n1", assignments(f"t{index}"))
    registry.post("n1", DispatcherMessage(heartbeat_ack=HeartbeatAck(sequence=2)))
    first = await session.outbox.get()
    second = await session.outbox.get()
    assert first is not None and first.heartbeat_ack.sequence == 2  # its turn was kept
    assert second is not None and second.assignments.tasks[0].id == "t499"
    assert len(session.outbox) == 0


def test_posting_to_a_node_without_a_session_or_too_large_a_message_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = SessionRegistry()
    assert not registry.post("absent", assignments("t1"))
    session = opened(registry, "n1")
    monkeypatch.setattr(sessions_module, "MAX_SESSION_MESSAGE_BYTES", 100)
    big = assignments("t" * 200)
    with structlog.testing.capture_logs() as logs:
        assert not registry.post("n1", big)
    assert len(session.outbox) == 0
    assert [e["event"] for e in logs] == ["session.message_too_large"]


def test_a_replaced_session_is_not_removed_by_its_predecessor() -> None:
    registry = SessionRegistry()
    old = opened(registry, "n1")
    old.close()
    new = opened(registry, "n1")  # the node reconnected
    assert not registry.remove(old)
    assert registry.get("n1") is new and "n1" in registry and len(registry) == 1
    assert registry.post("n1", assignments("t1"))
    assert len(new.outbox) == 1 and len(old.outbox) == 0
    assert registry.remove(new)
    assert registry.get("n1") is None and registry.node_ids() == []


def test_liveness_outlives_the_session() -> None:
    registry = SessionRegistry()
    session = opened(registry, "n1")
    before = time.monotonic()
    registry.beat("n1")
    registry.beat("n1")
    seen = registry.last_seen("n1")
    assert seen is not None and seen.monotonic >= before
    assert registry.heartbeats_received == 2
    registry.remove(session)
    assert registry.last_seen("n1") == seen  # the monitor measures silence from it
    assert registry.last_seen("n2") is None
    assert registry.seconds_since_seen("n2", default=time.monotonic() - 5) >= 5


async def test_closing_by_serial_ends_only_that_certificates_sessions() -> None:
    registry = SessionRegistry()
    revoked = opened(registry, "n1", serial="aa")
    kept = opened(registry, "n2", serial="bb")
    registry.close_serial("aa")
    assert revoked.outbox.closed and await revoked.outbox.get() is None
    assert not kept.outbox.closed
    registry.close("n2")
    assert kept.outbox.closed
    opened(registry, "n3")
    registry.close_all()
    assert all(
        s is not None and s.outbox.closed for s in (registry.get(n) for n in registry.node_ids())
    )
