"""Failover: an agent learns the new leader the moment one is elected (the
`Dispatcher.Leader` long poll), not after its reconnection backoff. Two controllers
run in this process against a real etcd (insecure, no HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common.backoff import Backoff
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.config import ControllerConfig
from dockyard.controller.server import Controller
from dockyard.controller.state import ClusterState
from dockyard.controller.store import SERVICES, Store
from dockyard.v1.dispatcher_pb2 import LeaderRequest
from dockyard.v1.types_pb2 import NodeDescription
from tests.orchestrators.helpers import service
from tests.polling import wait_until

TTL = 2
# Far longer than the test waits: an agent that backs off before reconnecting fails it.
BACKOFF = 300.0


def _config(etcd: EtcdServer, state_dir: Path) -> ControllerConfig:
    return ControllerConfig(
        state_dir=state_dir,
        listen="127.0.0.1:0",
        etcd_endpoints=[etcd.endpoint],
        etcd_prefix="/failover",
        insecure=True,
        http_listen="",
        leader_ttl=TTL,
    )


@pytest.fixture
async def controllers(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[list[Controller]]:
    started: list[Controller] = []
    try:
        for name in ("a", "b"):
            controller = Controller(_config(etcd, tmp_path / name))
            await controller.start()
            started.append(controller)
        yield started
    finally:
        for controller in started:
            with contextlib.suppress(Exception):
                await controller.stop(grace=0.5)


def _address(controller: Controller) -> str:
    return f"127.0.0.1:{controller.port}"


def _leader(controllers: list[Controller]) -> Controller | None:
    for controller in controllers:
        if controller.leadership is not None and controller.leadership.is_leader:
            return controller
    return None


async def test_an_agent_follows_the_new_leader_without_waiting_for_its_backoff(
    controllers: list[Controller],
) -> None:
    await wait_until(lambda: _leader(controllers) is not None, "a leader")
    old = _leader(controllers)
    assert old is not None
    new = next(c for c in controllers if c is not old)
    session = ControllerSession(
        [_address(old), _address(new)],
        NodeIdentity("failovernode1", "failover-node"),
        NodeDescription,
        backoff=Backoff(initial=BACKOFF, maximum=BACKOFF),
    )
    running = asyncio.create_task(session.run())
    try:
        await wait_until(
            lambda: (
                session.status.state == "connected" and session.status.controller == _address(old)
            ),
            "the agent's session to the first leader",
        )
        assert old.leadership is not None
        # The term it will name when it asks where the leader went.
        assert session.leader_terms() == {_address(old): old.leadership.term}
        await old.stop(grace=0.5)  # resigns: the other controller is elected
        await wait_until(
            lambda: (
                session.status.state == "connected" and session.status.controller == _address(new)
            ),
            "the agent's session to the new leader (before its backoff ended)",
            timeout=30,
        )
        assert new.sessions.node_ids() == ["failovernode1"]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_follower_answers_where_the_leader_is_and_waits_for_a_new_one(
    controllers: list[Controller],
) -> None:
    await wait_until(lambda: _leader(controllers) is not None, "a leader")
    leader = _leader(controllers)
    assert leader is not None
    follower = next(c for c in controllers if c is not leader)
    await wait_until(
        lambda: follower.leadership is not None and follower.leadership.leader is not None,
        "the follower to know the leader",
    )
    assert follower.dispatcher is not None
    context = _Context()
    answer = await follower.dispatcher.Leader(LeaderRequest(wait_seconds=5), context)  # type: ignore[arg-type]
    assert answer.address == _address(leader)
    # Not the one lost: the follower waits (no other leader comes), then says none.
    answer = await follower.dispatcher.Leader(
        LeaderRequest(not_address=_address(leader), wait_seconds=0.5),
        context,  # type: ignore[arg-type]
    )
    assert answer.address == ""
    # A term of that address older than the one the follower knows was lost: the
    # leader there now (a restarted controller, re-elected) is the answer, at once.
    assert leader.leadership is not None
    term = leader.leadership.term
    assert term > 0
    answer = await follower.dispatcher.Leader(
        LeaderRequest(not_address=_address(leader), wait_seconds=5, lost_term=term - 1),
        context,  # type: ignore[arg-type]
    )
    assert answer.address == _address(leader)
    answer = await follower.dispatcher.Leader(
        LeaderRequest(not_address=_address(leader), wait_seconds=0.5, lost_term=term),
        context,  # type: ignore[arg-type]
    )
    assert answer.address == ""
    with pytest.raises(_Aborted, match="wait_seconds"):
        await follower.dispatcher.Leader(LeaderRequest(wait_seconds=31), context)  # type: ignore[arg-type]


class _Aborted(Exception):
    pass


class _Context:
    async def abort(self, code: object, details: str) -> None:
        raise _Aborted(details)


async def test_a_new_term_carries_on_from_the_followers_view_without_a_relist(
    controllers: list[Controller], monkeypatch: pytest.MonkeyPatch
) -> None:
    await wait_until(lambda: _leader(controllers) is not None, "a leader")
    old = _leader(controllers)
    assert old is not None and old.store is not None
    new = next(c for c in controllers if c is not old)
    view = new.view
    assert view is not None and new.state is None  # a follower keeps a view
    await wait_until(lambda: view.revision > 0, "the follower's view to load")
    relists = 0
    real_relist = ClusterState._relist

    async def counted(self: ClusterState) -> None:
        nonlocal relists
        relists += 1
        await real_relist(self)

    monkeypatch.setattr(ClusterState, "_relist", counted)
    web = service(replicas=1)
    await old.store.create(SERVICES, web.id, web)
    await wait_until(lambda: web.id in view.services, "the follower's view to see the service")
    await old.stop(grace=0.5)
    await wait_until(lambda: new.state is not None, "the new leader's term")
    assert new.state is view
    assert relists == 0


async def test_a_term_waiting_for_the_view_starts_once_its_first_list_is_in(
    etcd: EtcdServer,
) -> None:
    """A controller elected while its view is still listing (just restarted) waits for
    that list, not for the next write to the cluster (none may come)."""
    store = Store([etcd.endpoint], "/loading")
    await store.connect(5)
    try:
        web = service(replicas=1)
        current = await store.create(SERVICES, web.id, web)
        view = ClusterState(store)
        waiting = asyncio.create_task(view.wait_for_revision(current, timeout=5))
        await asyncio.sleep(0)  # the term waits before the view has listed
        following = asyncio.create_task(view.follow())
        try:
            await waiting  # TimeoutError: the list did not wake the waiter
            assert web.id in view.services
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
    finally:
        await store.close()
