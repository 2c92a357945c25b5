"""What the scheduling loop decides in one batch and how it writes it, against a real
etcd: a backlog of several services is cut into batches that keep each service's tasks
together (the scheduler's work per group is over every node), and a batch's writes
carry one time stamp."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from dockyard.common import quiet_edge
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.scheduler import loop as scheduler_loop
from dockyard.controller.scheduler.loop import SchedulingLoop, by_service
from dockyard.controller.scheduler.nodeinfo import NodeInfo
from dockyard.controller.scheduler.scheduler import SchedulingResult
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NODES, TASKS, Store
from dockyard.v1.workloads_pb2 import Task
from tests.polling import wait_until
from tests.quiet_clock import LaterClock
from tests.scheduler.helpers import make_node, make_task
from tests.views import background, watched_view

SERVICES = ["alpha", "beta", "gamma"]
PER_SERVICE = 4


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    store = Store([etcd.endpoint], "/batches")
    await store.connect(5)
    try:
        for node_id in ("n0", "n1"):
            await store.create(NODES, node_id, make_node(node_id))
        yield store
    finally:
        await store.close()


async def add_pending(store: Store) -> list[str]:
    """PER_SERVICE tasks of each service, created interleaved."""
    ids = []
    for index in range(PER_SERVICE):
        for service in SERVICES:
            task = make_task(f"{service}-{index}", service)
            task.desired_state = TaskState.RUNNING
            task.status.state = TaskState.PENDING
            await store.create(TASKS, task.id, task)
            ids.append(task.id)
    return ids


def placed(view: ClusterState, ids: list[str]) -> bool:
    return all(view.tasks[i].status.state == TaskState.ASSIGNED for i in ids)


def test_by_service_keeps_each_services_tasks_together() -> None:
    tasks = [make_task(f"{s}-{i}", s) for i in range(3) for s in ("b", "a", "b", "c")]
    ordered = by_service(tasks)
    assert sorted(t.id for t in ordered) == sorted(t.id for t in tasks)
    services = [t.service_id for t in ordered]
    assert services == ["b"] * 6 + ["a"] * 3 + ["c"] * 3  # in order of first appearance


async def test_a_backlog_is_batched_by_service(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of PER_SERVICE tasks out of a backlog of three services created
    interleaved: each batch holds one service's tasks, so the scheduler places one
    group per batch (in the view's set order, batches mixed the services)."""
    monkeypatch.setattr(scheduler_loop, "MAX_ROUND_TASKS", PER_SERVICE)
    ids = await add_pending(store)
    async with watched_view(store) as view:
        loop = SchedulingLoop(store, view)
        batches: list[list[str]] = []
        schedule = loop._scheduler.schedule

        def recording(nodes: Sequence[NodeInfo], tasks: Sequence[Task]) -> SchedulingResult:
            batches.append([t.service_id for t in tasks])
            return schedule(nodes, tasks)

        monkeypatch.setattr(loop._scheduler, "schedule", recording)
        async with background(loop.run(), "test:scheduler"):
            await wait_until(lambda: placed(view, ids), "every task assigned")
    assert len(batches) == len(SERVICES)
    assert sorted(sorted(set(batch)) for batch in batches) == [[s] for s in SERVICES]


async def test_a_batchs_writes_carry_one_stamp(store: Store) -> None:
    """Every placement of a batch is stamped with one time: its status, when it was
    observed, and the record's update (one clock read for the batch)."""
    ids = await add_pending(store)
    async with watched_view(store) as view:
        loop = SchedulingLoop(store, view)
        async with background(loop.run(), "test:scheduler"):
            await wait_until(lambda: placed(view, ids), "every task assigned")
        stamps = set()
        for task_id in ids:
            task = view.tasks[task_id]
            assert task.status.timestamp == task.observed_at == task.meta.updated_at
            stamps.add(task.status.timestamp.SerializeToString())
    assert len(stamps) == 1


async def test_a_task_after_a_quiet_time_is_placed_without_the_debounce(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first pending task after a quiet time is placed at once: with a debounce of
    30 s (and the loop's wait made to look 30 s long) it is placed well within it (the
    loop waited the debounce before every round)."""
    monkeypatch.setattr(scheduler_loop, "DEBOUNCE", 30.0)
    async with watched_view(store) as view:
        loop = SchedulingLoop(store, view)
        async with background(loop.run(), "test:scheduler"):
            monkeypatch.setattr(quiet_edge, "time", LaterClock(30.0))  # the loop's wait: quiet
            task = make_task("alone-0", "alone")
            task.desired_state = TaskState.RUNNING
            task.status.state = TaskState.PENDING
            await store.create(TASKS, task.id, task)
            await wait_until(
                lambda: task.id in view.tasks and placed(view, [task.id]),
                "the task assigned",
                timeout=20,
            )
