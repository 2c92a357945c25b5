"""The leader's loops: supervised, stopped when the term ends, and a fresh node grace
per term. Controllers run in this process against a real etcd (insecure, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.config import ControllerConfig
from dockyard.controller.leadership import LEADER_KEY
from dockyard.controller.nodemonitor import NodeMonitor
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.orchestrators.loop import Orchestrator
from dockyard.controller.server import Controller
from dockyard.controller.sessions import SessionRegistry
from dockyard.controller.state import ClusterState
from dockyard.controller.store import (
    CONTROLLERS,
    LEADER,
    NODES,
    SERVICES,
    TASKS,
    LeadershipLost,
    LeaseRenewer,
    Store,
    StoreUnavailable,
)
from dockyard.controller.supervision import LoopsFailing, Supervisor
from dockyard.v1.types_pb2 import NodeStatus
from tests.etcd_store import connected_store
from tests.orchestrators.helpers import node, service
from tests.polling import wait_until

# Every loop a term runs (controller/server.py, `_term_loops`).
LEADER_LOOPS = (
    "nodemonitor",
    "assigner",
    "taskstatus",
    "scheduler",
    "orchestrator",
    "networkmap",
    "ingressaddresses",
)
TTL = 2


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/loops") as store:
        yield store


@pytest.fixture
async def controller(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[Controller]:
    config = ControllerConfig(
        state_dir=tmp_path / "controller",
        listen="127.0.0.1:0",
        etcd_endpoints=[etcd.endpoint],
        etcd_prefix="/loops",
        insecure=True,
        http_listen="",
        leader_ttl=TTL,
    )
    controller = Controller(config)
    await controller.start()
    try:
        await wait_until(lambda: controller.state is not None, "the controller to lead")
        yield controller
    finally:
        await controller.stop()


def leading(controller: Controller) -> bool:
    leadership = controller.leadership
    return bool(leadership and leadership.is_leader) and controller.state is not None


def term_over(controller: Controller) -> bool:
    assert controller.leadership is not None
    return (
        not controller.leadership.is_leader and controller.state is None and controller.term is None
    )


async def has_tasks(store: Store, count: int) -> bool:
    return await task_count(store) == count


async def task_count(store: Store) -> int:
    tasks, _ = await store.list_all(TASKS)
    return len(tasks)


async def test_a_crashed_orchestrator_is_restarted_and_the_cluster_converges(
    controller: Controller, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes = 0
    real_round = Orchestrator._round

    async def crash_once(self: Orchestrator, service_ids: set[str]) -> None:
        nonlocal crashes
        if service_ids and crashes == 0:
            crashes += 1
            raise TimeoutError("the cluster view did not reach revision 7 (injected)")
        await real_round(self, service_ids)

    monkeypatch.setattr(Orchestrator, "_round", crash_once)
    with structlog.testing.capture_logs() as logs:
        svc = service(replicas=2)
        svc.meta.version = 0
        await store.create(SERVICES, svc.id, svc)
        await wait_until(lambda: crashes == 1, "the injected crash")
        await wait_until(lambda: has_tasks(store, 2), "the restarted orchestrator's tasks")
    assert await task_count(store) == 2
    crashed = [e for e in logs if e["event"] == "leader_loop.crashed"]
    assert crashed and crashed[0]["loop"] == "orchestrator"
    assert "injected" in crashed[0]["error"]
    assert leading(controller), "one crash must not end the term"


async def test_a_keep_alive_error_ends_the_term_and_the_controller_leads_again(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert controller.store is not None and controller.leadership is not None
    broken = True
    real_refresh = Store.refresh_lease
    real_renew = LeaseRenewer.refresh_lease

    async def refresh(self: Store, lease_id: int) -> bool:
        if broken:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="keep-alive stream broken (injected)",
            )
        return await real_refresh(self, lease_id)

    def renew(self: LeaseRenewer, lease_id: int, timeout: float) -> bool:
        if broken:
            raise StoreUnavailable("keep-alive stream broken (injected)")
        return real_renew(self, lease_id, timeout)

    # The controller's own record is refreshed on its loop (Store); the leader lease by
    # the keeper's thread (LeaseRenewer, controller/leadership.py).
    monkeypatch.setattr(Store, "refresh_lease", refresh)
    monkeypatch.setattr(LeaseRenewer, "refresh_lease", renew)
    first_fence = controller.leadership.fence
    await wait_until(lambda: term_over(controller), "the term to end", timeout=4 * TTL)
    broken = False
    await wait_until(lambda: leading(controller), "a new term", timeout=6 * TTL)
    fence = controller.leadership.fence
    assert fence is not None and first_fence is not None
    assert fence.create_revision > first_fence.create_revision
    # The controller's own record (on a lease of its own, refreshed the same way)
    # outlived the errors too: `dockyard info` still lists it.
    await wait_until(lambda: registered(controller), "the controller's record", timeout=6 * TTL)
    assert not controller.failed.is_set()


async def registered(controller: Controller) -> bool:
    assert controller.store is not None
    records, _ = await controller.store.list_all(CONTROLLERS)
    return len(records) == 1


async def test_losing_the_key_stops_every_leader_loop(controller: Controller, store: Store) -> None:
    """Another writer deletes the leader key while the lease is alive: the term ends,
    the leader loops are cancelled, and the controller is elected again."""
    assert controller.leadership is not None
    first = controller.leadership.fence
    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("leader:")]
    assert sorted(t.get_name().removeprefix("leader:") for t in loops) == sorted(LEADER_LOOPS)
    await store.delete(LEADER, LEADER_KEY)
    await wait_until(
        lambda: all(t.done() for t in loops), "every leader loop to stop", timeout=4 * TTL
    )
    await wait_until(lambda: leading(controller), "a new term", timeout=6 * TTL)
    assert controller.leadership.fence != first


async def test_loops_that_keep_crashing_give_up_the_term() -> None:
    supervisor = Supervisor(max_crashes=3, window=60, backoff=0.01)
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("boom")

    with pytest.raises(LoopsFailing, match="3 times"):
        await asyncio.wait_for(supervisor.supervise("scheduler", broken), 10)
    assert runs == 3


async def test_a_new_term_gives_every_node_a_fresh_grace(store: Store) -> None:
    """A node heard in an earlier term, long enough ago to be past its grace, is not
    marked DOWN when a new term starts: it gets the startup grace from the term's start."""
    grace, startup = 0.3, 1.5
    registry = NodeRegistry(store)
    await store.create(NODES, "n1", node("n1"))
    sessions = SessionRegistry()
    sessions.beat("n1")  # the earlier term heard it
    await asyncio.sleep(2 * grace)
    monitor = NodeMonitor(
        registry, sessions, grace, term_started=time.monotonic(), startup_grace=startup
    )
    await monitor.check()
    assert (await store.get(NODES, "n1")).status.state == NodeStatus.READY
    await asyncio.sleep(startup + 0.2)
    await monitor.check()
    down = await store.get(NODES, "n1")
    assert down.status.state == NodeStatus.DOWN, "the startup grace must still end"
    assert "no heartbeat" in down.status.message


async def test_a_leader_paused_past_its_lease_sends_and_writes_nothing(
    controller: Controller, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole process stops (a GC pause, SIGSTOP) for longer than the lease: etcd
    expires it. On waking, before its keep-alive has run, the old term neither sends
    to agents nor writes, and the controller is then elected again. The pause is the
    event loop's and the lease keeper thread's at once (it renews from its own)."""
    leadership, base = controller.leadership, controller.store
    assert leadership is not None and base is not None and leadership.fence is not None
    term_store = base.fenced(leadership.fence)
    await term_store.create(NODES, "early", node("early"))
    assert leadership.holds()
    paused = threading.Event()
    real_renew = LeaseRenewer.refresh_lease

    def frozen(self: LeaseRenewer, lease_id: int, timeout: float) -> bool:
        paused.wait(TTL + 3)  # blocks the keeper's thread, as a paused process would
        return real_renew(self, lease_id, timeout)

    monkeypatch.setattr(LeaseRenewer, "refresh_lease", frozen)
    time.sleep(TTL + 1.5)  # noqa: ASYNC251 - the pause under test blocks the event loop
    assert not leadership.holds()
    with pytest.raises(LeadershipLost):
        await term_store.create(NODES, "late", node("late"))
    paused.set()
    monkeypatch.setattr(LeaseRenewer, "refresh_lease", real_renew)
    assert [n.id for n in (await store.list_all(NODES))[0]] == ["early"]
    await wait_until(lambda: leading(controller), "a new term", timeout=6 * TTL)


async def test_a_busy_event_loop_keeps_the_lease(controller: Controller, store: Store) -> None:
    """The event loop blocked for longer than the lease (tens of thousands of tasks to
    plan): the keeper thread renews the lease meanwhile, so the term goes on and its
    writes land (main's keep-alive ran on the loop and lost the term here)."""
    leadership, base = controller.leadership, controller.store
    assert leadership is not None and base is not None and leadership.fence is not None
    fence = leadership.fence
    term_store = base.fenced(fence)
    time.sleep(TTL + 1.5)  # noqa: ASYNC251 - the busy loop under test
    assert leadership.holds()
    await term_store.create(NODES, "busy", node("busy"))
    await asyncio.sleep(TTL / 2)
    assert leadership.fence == fence and leading(controller)


async def test_etcd_stopped_ends_the_term_and_its_return_starts_another(
    controller: Controller, etcd: EtcdServer
) -> None:
    assert controller.leadership is not None
    first = controller.leadership.fence
    await etcd.stop()
    try:
        await wait_until(lambda: term_over(controller), "the term to end", timeout=4 * TTL)
        assert not controller.leadership.holds()
    finally:
        await etcd.start()
    await wait_until(lambda: leading(controller), "a new term once etcd is back", timeout=30)
    assert controller.leadership.fence != first


async def test_a_crashed_view_watch_resumes_where_it_was(
    controller: Controller, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view's watch is a supervised loop too: when it crashes on an event, it is
    restarted from that event's revision and nothing is missed."""
    crashes = 0
    real_put = ClusterState._put

    def put_crashing_once(
        self: ClusterState, kind: Any, table: Any, record_id: str, value: Any
    ) -> None:
        nonlocal crashes
        if kind is SERVICES and crashes == 0:
            crashes += 1
            raise RuntimeError("corrupt event (injected)")
        real_put(self, kind, table, record_id, value)

    monkeypatch.setattr(ClusterState, "_put", put_crashing_once)
    svc = service(replicas=2)
    svc.meta.version = 0
    await store.create(SERVICES, svc.id, svc)
    await wait_until(lambda: has_tasks(store, 2), "the service's tasks")
    assert crashes == 1
    assert leading(controller)


async def test_a_failing_background_job_is_seen_at_once_and_ends_the_others(
    etcd: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background job that raises is logged when it fails and sets `failed` (the
    process then exits 1); the other jobs stop with it: nothing runs on headless."""
    from dockyard.controller import registration

    async def broken(self: object) -> None:
        raise RuntimeError("registration bug (injected)")

    monkeypatch.setattr(registration.Registration, "run", broken)
    config = ControllerConfig(
        state_dir=tmp_path / "controller",
        listen="127.0.0.1:0",
        etcd_endpoints=[etcd.endpoint],
        etcd_prefix="/failing",
        insecure=True,
        http_listen="",
        leader_ttl=TTL,
    )
    controller = Controller(config)
    with structlog.testing.capture_logs() as logs:
        await controller.start()
        try:
            await asyncio.wait_for(controller.failed.wait(), 10)
            failed = [e for e in logs if e["event"] == "controller.job_failed"]
            assert failed and "registration bug (injected)" in failed[0]["error"]
            await wait_until(
                lambda: (
                    controller.leadership is not None
                    and not controller.leadership.is_leader
                    and controller.term is None
                ),
                "leadership to stop with it",
            )
        finally:
            await controller.stop()
