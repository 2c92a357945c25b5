"""Leadership is a fence: a deposed leader's loops write nothing (real etcd).

Two store clients stand for two controllers. A is elected; then its lease is
revoked (as etcd does when A is paused or cut off past the lease) and B is
elected. A's loops, still running as a paused leader's would, must fail on
their next write with LeadershipLost, and nothing of theirs may land.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.attachments import AttachmentRegistry
from dockyard.controller.leadership import LEADER_KEY, Leadership
from dockyard.controller.networks import NetworkRegistry
from dockyard.controller.orchestrators.loop import Orchestrator
from dockyard.controller.orchestrators.tasks import new_task
from dockyard.controller.scheduler.loop import SchedulingLoop
from dockyard.controller.store import (
    LEADER,
    NETWORK_ATTACHMENTS,
    NODES,
    SERVICES,
    TASKS,
    Conflict,
    Fence,
    LeadershipLost,
    NotFound,
    Store,
)
from dockyard.v1.networks_pb2 import NetworkSpec
from tests.orchestrators.helpers import node, service
from tests.polling import wait_until
from tests.views import watched_view

PREFIX = "/fence"


@pytest.fixture
async def stores(etcd: EtcdServer) -> AsyncIterator[tuple[Store, Store]]:
    first, second = Store([etcd.endpoint], PREFIX), Store([etcd.endpoint], PREFIX)
    await first.connect(5)
    await second.connect(5)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


class Term:
    """A Leadership.run whose `lead` only records its fence and waits."""

    def __init__(self, store: Store, name: str) -> None:
        self.leadership = Leadership(store, name, f"{name}:1", ttl=2)
        self.fences: list[Fence] = []
        self.task: asyncio.Task[None] | None = None

    async def _lead(self, fence: Fence) -> None:
        self.fences.append(fence)
        await asyncio.Event().wait()

    async def start(self) -> Fence:
        self.task = asyncio.create_task(self.leadership.run(self._lead))
        await wait_until(lambda: bool(self.fences), "elected")
        return self.fences[-1]

    async def stop(self) -> None:
        """Cancel the campaign: the lease is revoked, the key goes with it."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def run_until_fenced(run: Callable[[], Awaitable[None]]) -> None:
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(run(), 20)


async def test_a_deposed_leaders_orchestrator_and_scheduler_write_nothing(
    stores: tuple[Store, Store],
) -> None:
    store_a, store_b = stores
    a, b = Term(store_a, "a"), Term(store_b, "b")
    try:
        fence_a = await a.start()
        fenced_a = store_a.fenced(fence_a)
        # While A leads, its fenced writes land.
        await fenced_a.create(NODES, "n1", node("n1"))
        # A is deposed (its lease revoked, as on expiry) and B elected.
        await a.stop()
        await b.start()
        svc = service(replicas=3)
        svc.meta.version = 0
        await store_b.create(SERVICES, svc.id, svc)
        pending = new_task(svc, 1)
        await store_b.create(TASKS, pending.id, pending)
        # A's loops, started on A's fenced store as a paused leader's would still run.
        async with watched_view(fenced_a) as view:
            orchestrator = Orchestrator(fenced_a, view, 10.0, lambda s, n: True)
            await run_until_fenced(orchestrator.run)
            await run_until_fenced(SchedulingLoop(fenced_a, view).run)
        tasks, _ = await store_b.list_all(TASKS)
        assert [t.id for t in tasks] == [pending.id], "the deposed orchestrator created tasks"
        assert tasks[0].status.state == TaskState.PENDING and not tasks[0].node_id
        assert fenced_a.last_revision < tasks[0].meta.version
    finally:
        await a.stop()
        await b.stop()


async def test_an_earlier_terms_delayed_transaction_fails_whole(
    stores: tuple[Store, Store],
) -> None:
    """The same controller elected again: its previous term's writes are fenced too,
    and commit_each neither drops the ops as conflicts nor retries them."""
    store, _ = stores
    term = Term(store, "a")
    try:
        first = await term.start()
        await store.delete(LEADER, LEADER_KEY)  # the key is lost; A campaigns again
        await wait_until(lambda: len(term.fences) == 2, "elected again")
        assert term.fences[1].create_revision > first.create_revision
        old = store.fenced(first)
        ops = [old.put_op(NODES, f"n{i}", node(f"n{i}"), expect=0) for i in range(300)]
        with pytest.raises(LeadershipLost, match="re-created"):
            await old.commit_each(ops)
        with pytest.raises(LeadershipLost):
            await old.commit(ops[:1])
        nodes, _ = await store.list_all(NODES)
        assert nodes == []
        current = store.fenced(term.fences[1])
        assert all(await current.commit_each(ops))
        assert len((await store.list_all(NODES))[0]) == 300
    finally:
        await term.stop()
    with pytest.raises(LeadershipLost, match="is gone"):
        await current.commit(ops[:1])


async def test_a_failed_transaction_does_not_move_last_revision(
    stores: tuple[Store, Store],
) -> None:
    store, other = stores
    await store.create(NODES, "n1", node("n1"))
    before = store.last_revision
    await other.create(SERVICES, "s1", service())  # etcd moves on, without this client
    with pytest.raises(Conflict):
        await store.commit([store.put_op(NODES, "n1", node("n1"), expect=0)])
    assert store.last_revision == before
    assert await store.commit_each([store.put_op(NODES, "n1", node("n1"), expect=1)]) == [False]
    assert store.last_revision == before


async def test_a_cancel_that_arrives_while_a_term_ends_stops_the_campaign(
    stores: tuple[Store, Store],
) -> None:
    """The term ends (its key deleted) and, while its loops clean up, the controller
    stops. Python 3.11's TaskGroup drops a cancel that arrives while it is already
    cancelling its children: close() must still end the campaign."""
    store, other = stores
    leadership = Leadership(store, "a", "a:1", ttl=2)
    cleaning = asyncio.Event()

    async def lead(fence: Fence) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaning.set()
            await asyncio.sleep(0.5)  # closing sessions, stopping the view

    campaign = asyncio.create_task(leadership.run(lead))
    try:
        await wait_until(lambda: leadership.is_leader, "elected")
        await other.delete(LEADER, LEADER_KEY)
        await asyncio.wait_for(cleaning.wait(), 10)
        leadership.close()
        campaign.cancel()
        await asyncio.wait_for(asyncio.gather(campaign, return_exceptions=True), 10)
        assert not leadership.is_leader
        with pytest.raises(NotFound):
            await other.get(LEADER, LEADER_KEY)
    finally:
        campaign.cancel()
        await asyncio.gather(campaign, return_exceptions=True)


async def test_a_deposed_leaders_network_attachment_is_not_written(
    stores: tuple[Store, Store],
) -> None:
    """A standalone container's attachment (controller/attachments.py) is written through
    the term's fenced store: after the term, the attach fails whole, no address held."""
    store, _ = stores
    term = Term(store, "a")
    try:
        first = await term.start()
        fenced = store.fenced(first)
        await NetworkRegistry(fenced).create(NetworkSpec(name="att", attachable=True))
        async with watched_view(fenced) as view:
            registry = AttachmentRegistry(fenced, view)
            _, held = await registry.attach("n1", "att", "c" * 64, "solo")
            assert held.address
            await store.delete(LEADER, LEADER_KEY)  # the key is lost: the term is over
            with pytest.raises(LeadershipLost):
                await registry.attach("n1", "att", "d" * 64, "late")
            with pytest.raises(LeadershipLost):
                await registry.detach("n1", "c" * 64)
        attachments, _ = await store.list_all(NETWORK_ATTACHMENTS)
        assert [a.container_name for a in attachments] == ["solo"]
    finally:
        await term.stop()
