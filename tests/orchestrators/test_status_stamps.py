"""The leader stamps, on its own clock, when it first sees an agent's task
state change (real etcd): planners measure delays from that stamp, never from
the agent's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.assignments import StatusWriter
from dockyard.controller.orchestrators.tasks import State, observed_at, set_status
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS, Store
from dockyard.v1.dispatcher_pb2 import TaskStatusReport
from dockyard.v1.workloads_pb2 import Task

HOUR = 3600.0


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    try:
        yield store
    finally:
        await store.close()


async def report(state: ClusterState, writer: StatusWriter, task_id: str, status: int,
                 message: str) -> Task:  # fmt: skip
    """Send one report from node n1, as an agent a whole hour ahead would."""
    sent = TaskStatusReport(task_id=task_id)
    sent.status.state = status  # type: ignore[assignment]
    sent.status.message = message
    sent.status.timestamp.FromNanoseconds(int((time.time() + HOUR) * 1e9))
    changed = state.subscribe()
    assert writer.accept("n1", sent) is None
    async with asyncio.timeout(10):
        while state.tasks[task_id].status.message != message:
            await changed.wait()
            changed.clear()
    return state.tasks[task_id]


async def test_a_state_change_is_stamped_on_the_controllers_clock(store: Store) -> None:
    task = Task(id="t1", service_id="svc", slot=1, node_id="n1", desired_state=State.RUNNING)
    set_status(task, State.ASSIGNED, "scheduled")
    task.observed_at.FromSeconds(1)  # long ago: a change must move it
    await store.create(TASKS, task.id, task)
    state = ClusterState(store)
    await state.start()
    try:
        writer = StatusWriter(store, state)
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(writer.run())
            before = time.time()
            started = await report(state, writer, "t1", State.RUNNING, "started")
            after = time.time()
            assert before - 1 <= observed_at(started) <= after + 1
            assert started.status.timestamp.seconds > after + HOUR / 2  # the agent's own
            same = await report(state, writer, "t1", State.RUNNING, "still running")
            assert same.observed_at == started.observed_at  # no change of state, no new stamp
            runner.cancel()
    finally:
        await state.stop()
