"""A plan whose write conflicted is planned again by the orchestrator itself (real etcd
and view): the conflicting write is a status-only change (the scheduler placing a task),
which marks no service, so nothing else would bring the service back to be planned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.orchestrators import loop as orchestrator_loop
from dockyard.controller.orchestrators.loop import Orchestrator
from dockyard.controller.orchestrators.tasks import new_task, set_status
from dockyard.controller.store import NODES, SERVICES, TASKS, LeadershipLost, Op, Store
from dockyard.v1.workloads_pb2 import Task
from tests.etcd_store import connected_store
from tests.orchestrators.helpers import is_live, node, service
from tests.polling import wait_until
from tests.views import background, watched_view


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/replan") as store:
        yield store


async def a_slot_with_a_duplicate(store: Store) -> tuple[Task, Task]:
    """Service `svc` (1 replica) on node n1: its task running in slot 1, and a PENDING
    duplicate in the same slot (a deposed leader's double create)."""
    await store.create(NODES, "n1", node("n1"))
    svc = service(replicas=1)
    svc.meta.version = 0
    await store.create(SERVICES, svc.id, svc)
    kept = new_task(svc, 1, "n1")
    set_status(kept, TaskState.RUNNING, "started")
    twin = new_task(svc, 1)
    for task in (kept, twin):
        await store.create(TASKS, task.id, task)
    return kept, twin


def placed(task: Task) -> Task:
    """The scheduler's write of `task`: ASSIGNED to n1 (a status-only change)."""
    copy = Task()
    copy.CopyFrom(task)
    copy.node_id = "n1"
    set_status(copy, TaskState.ASSIGNED, "scheduled")
    return copy


class RacedOnce:
    """Wraps the orchestrator's store's commit_each: before the first commit that writes
    `task_id`, the task is placed through another store (so that commit conflicts)."""

    def __init__(self, store: Store, other: Store, task_id: str) -> None:
        self.commits = 0
        self.raced = False
        self._commit_each = store.commit_each
        self._other = other
        self._key = store.put_op(TASKS, task_id, Task(), expect=None).key
        self._task_id = task_id

    async def __call__(self, ops: Sequence[Op]) -> list[bool]:
        self.commits += 1
        if not self.raced and any(op.key == self._key for op in ops):
            self.raced = True
            current = await self._other.get(TASKS, self._task_id)
            await self._other.update(TASKS, self._task_id, placed(current))
        return await self._commit_each(ops)


async def test_a_conflicted_reap_is_planned_again_without_another_change(
    store: Store, etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator plans the duplicate's shut-down; the scheduler places the
    duplicate between that plan and its commit; the commit conflicts. No other change
    comes (the placement is status-only), yet the duplicate is shut down."""
    kept, twin = await a_slot_with_a_duplicate(store)
    other = Store([etcd.endpoint], "/replan")
    await other.connect(5)
    try:
        async with watched_view(store) as view:
            orchestrator = Orchestrator(store, view, 10.0, lambda s, n: True)
            raced = RacedOnce(store, other, twin.id)
            monkeypatch.setattr(store, "commit_each", raced)
            async with background(orchestrator.run(), "test:orchestrator"):
                await wait_until(lambda: raced.raced, "the reap's commit raced")

                def reaped() -> bool:
                    live = [t.id for t in view.tasks.values() if is_live(t)]
                    return live == [kept.id]

                await wait_until(reaped, "the duplicate shut down", timeout=10)
            assert view.tasks[twin.id].desired_state == TaskState.SHUTDOWN
            assert view.tasks[twin.id].node_id == "n1"  # the placement stayed
    finally:
        await other.close()


class AlwaysConflicting:
    """A store whose every op conflicts (another writer always wins)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.last_revision = 0
        self.put_op = store.put_op
        self.raw_op = store.raw_op

    async def commit_each(self, ops: Sequence[Op]) -> list[bool]:
        return [False] * len(ops)

    async def current_revision(self) -> int:
        return 0


async def test_a_service_that_keeps_conflicting_is_retried_with_a_backoff(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each conflicted round puts the service's next plan further off (doubling, up to a
    bound), and a round whose writes land ends the backoff."""
    await a_slot_with_a_duplicate(store)
    async with watched_view(store) as view:
        conflicting = AlwaysConflicting(store)
        orchestrator = Orchestrator(conflicting, view, 10.0, lambda s, n: True)  # type: ignore[arg-type]
        now = 1_000.0
        monkeypatch.setattr(orchestrator_loop, "wall_time", lambda: now)
        delays = []
        for _ in range(12):
            conflicted = await orchestrator._round({"svc"})
            assert conflicted == {"svc"}
            delays.append(orchestrator._wake_at["svc"] - now)
        pause = orchestrator_loop.CONFLICT_PAUSE
        assert delays[:3] == pytest.approx([pause, 2 * pause, 4 * pause])
        assert delays == sorted(delays)
        assert delays[-1] == pytest.approx(orchestrator_loop.CONFLICT_PAUSE_MAX)
        orchestrator._store = store  # the writes land now
        assert await orchestrator._round({"svc"}) == set()
        assert "svc" not in orchestrator._wake_at
        assert not orchestrator._conflicts


class Fenced(AlwaysConflicting):
    """A deposed leader's store: its fence fails, nothing is written."""

    async def commit_each(self, ops: Sequence[Op]) -> list[bool]:
        raise LeadershipLost("the leader key is gone: nothing was written")


async def test_a_fenced_write_is_not_a_conflict_to_retry(store: Store) -> None:
    """LeadershipLost ends the run (the term is over), nothing is set to be planned
    again by this orchestrator."""
    await a_slot_with_a_duplicate(store)
    async with watched_view(store) as view:
        orchestrator = Orchestrator(Fenced(store), view, 10.0, lambda s, n: True)  # type: ignore[arg-type]
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(orchestrator.run(), 20)
        assert not orchestrator._conflicts
        assert "svc" not in orchestrator._wake_at
