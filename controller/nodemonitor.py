"""The node monitor: turns the session registry's heartbeat times into READY/DOWN.

A node not heard from for `grace` seconds is DOWN; a node
with an open session whose heartbeats are on time again is READY. One monitor
serves one term: a node not heard from since this controller became leader
(`term_started`, on this controller's monotonic clock) gets at least
`startup_grace` from that moment, whatever was heard in an earlier term, so
agents can reconnect after a failover or an etcd blip without being marked DOWN.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from dockyard.common.states import NodeState
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.sessions import SessionRegistry
from dockyard.controller.state import ClusterState
from dockyard.controller.store import StoreError

log = structlog.get_logger(__name__)


# A node not heard from since this controller became leader gets at least this
# long: its agent may be waiting out a reconnect backoff (up to 10 s).
STARTUP_GRACE = 15.0


class NodeMonitor:
    def __init__(
        self,
        registry: NodeRegistry,
        sessions: SessionRegistry,
        grace: float,
        persist_interval: float = 15.0,
        view: Callable[[], ClusterState | None] = lambda: None,
        *,
        term_started: float | None = None,
        startup_grace: float = STARTUP_GRACE,
    ) -> None:
        """`view` gives the leader's cluster view, read instead of etcd on every tick;
        `term_started` is when this controller became leader (time.monotonic(); now
        when None)."""
        self._registry = registry
        self._sessions = sessions
        self._grace = grace
        self._persist_interval = persist_interval
        self._view = view
        self._started = time.monotonic() if term_started is None else term_started
        self._startup_grace = max(grace, startup_grace)

    async def run(self) -> None:
        """Check every node a few times per grace period until cancelled."""
        tick = max(0.1, min(1.0, self._grace / 4))
        last_persist = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                await self.check()
                if time.monotonic() - last_persist >= self._persist_interval:
                    await self._persist_heartbeats()
                    last_persist = time.monotonic()
            except StoreError as exc:
                log.warning("nodemonitor.store_error", error=str(exc))

    async def check(self) -> None:
        changes: dict[str, tuple[NodeState.ValueType, str]] = {}
        view = self._view()
        nodes = list(view.nodes.values()) if view is not None else await self._registry.list_all()
        now = time.monotonic()
        for node in nodes:
            seen = self._sessions.last_seen(node.id)
            heard = seen is not None and seen.monotonic >= self._started  # in this term
            silent = now - (seen.monotonic if heard and seen else self._started)
            has_session = node.id in self._sessions
            allowed = self._grace if heard else self._startup_grace
            if node.status.state == NodeState.READY and silent > allowed:
                changes[node.id] = (NodeState.DOWN, f"no heartbeat for {silent:.1f} s")
            elif node.status.state != NodeState.READY and has_session and silent <= self._grace:
                changes[node.id] = (NodeState.READY, "heartbeats resumed")
        if changes:
            await self._registry.set_states(changes)

    async def _persist_heartbeats(self) -> None:
        beats = {
            node_id: seen.wall
            for node_id in self._sessions.node_ids()
            if (seen := self._sessions.last_seen(node_id)) is not None
        }
        await self._registry.record_heartbeats(beats)
