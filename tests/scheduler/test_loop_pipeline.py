"""The scheduling loop's pipeline, against a real etcd: the next batch is decided while
earlier ones are still being written, at most PIPELINE_DEPTH at once, and what comes
out is what a batch-after-batch loop gives (every task placed once, spread evenly, the
loop's NodeInfos equal to a rebuild from the view), also when a write fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.scheduler import loop as scheduler_loop
from dockyard.controller.scheduler.loop import PIPELINE_DEPTH, SchedulingLoop
from dockyard.controller.scheduler.nodeinfo import NodeInfo
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NODES, TASKS, Op, Store
from dockyard.v1.types_pb2 import NodeSpec
from tests.polling import wait_until
from tests.scheduler.helpers import make_node, make_task
from tests.views import background, watched_view

BATCH = 4
NODE_IDS = [f"n{i}" for i in range(4)]


class GatedStore(Store):
    """A store whose task writes wait at a gate, counting those waiting there."""

    def __init__(self, endpoints: Sequence[str], prefix: str) -> None:
        super().__init__(endpoints, prefix)
        self.gate = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def commit_each(self, ops: Sequence[Op]) -> list[bool]:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().commit_each(ops)


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[GatedStore]:
    gated = GatedStore([etcd.endpoint], "/pipeline")
    await gated.connect(5)
    try:
        for node_id in NODE_IDS:
            await gated.create(NODES, node_id, make_node(node_id))
        yield gated
    finally:
        await gated.close()


async def add_pending(store: Store, count: int) -> list[str]:
    ids = []
    for index in range(count):
        task = make_task(f"t{index:02d}")
        task.desired_state = TaskState.RUNNING
        task.status.state = TaskState.PENDING
        await store.create(TASKS, task.id, task)
        ids.append(task.id)
    return ids


def assigned(view: ClusterState, ids: list[str]) -> bool:
    return all(view.tasks[i].status.state == TaskState.ASSIGNED for i in ids)


def check_settled(loop: SchedulingLoop, view: ClusterState, ids: list[str]) -> None:
    """Every task placed once, evenly, and the loop's infos equal a rebuild."""
    per_node = {node_id: 0 for node_id in NODE_IDS}
    for task_id in ids:
        per_node[view.tasks[task_id].node_id] += 1
    assert sorted(per_node.values()) == [len(ids) // len(NODE_IDS)] * len(NODE_IDS)
    for node_id in NODE_IDS:
        rebuilt = NodeInfo.from_node(view.nodes[node_id], view.tasks_of_node(node_id))
        info = loop._infos[node_id]
        assert sorted(info.tasks) == sorted(rebuilt.tasks), node_id
        assert info.service_tasks == rebuilt.service_tasks
        assert info.reserved == rebuilt.reserved


@contextlib.asynccontextmanager
async def full_pipeline(
    store: GatedStore, monkeypatch: pytest.MonkeyPatch, batches: int
) -> AsyncIterator[tuple[list[str], ClusterState, SchedulingLoop]]:
    """``batches`` batches of pending tasks and a loop placing them, entered once
    PIPELINE_DEPTH batches wait at the store's gate."""
    monkeypatch.setattr(scheduler_loop, "MAX_ROUND_TASKS", BATCH)
    ids = await add_pending(store, BATCH * batches)
    async with watched_view(store) as view:
        loop = SchedulingLoop(store, view)
        async with background(loop.run(), "test:scheduler"):
            await wait_until(lambda: store.waiting == PIPELINE_DEPTH, "batches in flight", 10)
            yield ids, view, loop


async def test_batches_are_decided_while_earlier_ones_are_written(
    store: GatedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with full_pipeline(store, monkeypatch, PIPELINE_DEPTH + 1) as (ids, view, loop):
        await asyncio.sleep(0.3)  # the loop had time to start one more: it must not
        assert store.waiting == PIPELINE_DEPTH
        store.gate.set()
        await wait_until(lambda: assigned(view, ids), "every task assigned")
        await view.wait_for_revision(store.last_revision)
        check_settled(loop, view, ids)
    assert store.most_waiting == PIPELINE_DEPTH
    assert loop.placed == len(ids)


async def test_a_failed_write_in_the_pipeline_is_decided_again(
    store: GatedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task changed while its placement waits (the compare fails): it stays PENDING,
    is decided again once its batch is done, and the node that had adopted it is
    rebuilt only when no other batch is being written."""
    async with full_pipeline(store, monkeypatch, PIPELINE_DEPTH) as (ids, view, loop):
        changed = view.tasks[ids[0]]
        copy = type(changed)()
        copy.CopyFrom(changed)
        copy.status.message = "changed meanwhile"
        await store.update(TASKS, copy.id, copy)
        store.gate.set()
        await wait_until(lambda: assigned(view, ids), "every task assigned")
        await view.wait_for_revision(store.last_revision)
        check_settled(loop, view, ids)
    assert loop.placed == len(ids)


async def test_a_batch_waiting_for_a_slot_is_decided_on_the_newest_view(
    store: GatedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node drained while the next batch waits for a write slot takes none of it: the
    loop takes the view's changes after it has a slot, not before."""
    async with full_pipeline(store, monkeypatch, PIPELINE_DEPTH + 1) as (ids, view, _):
        decided = BATCH * PIPELINE_DEPTH // len(NODE_IDS)  # each node's share so far
        drained = make_node(NODE_IDS[0], availability=NodeSpec.DRAIN)
        drained.meta.version = view.nodes[NODE_IDS[0]].meta.version
        await store.update(NODES, drained.id, drained)
        await view.wait_for_revision(store.last_revision)
        store.gate.set()
        await wait_until(lambda: assigned(view, ids), "every task assigned")
    on_drained = [i for i in ids if view.tasks[i].node_id == NODE_IDS[0]]
    assert len(on_drained) == decided
