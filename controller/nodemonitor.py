"""The node monitor: turns the dispatcher's heartbeat times into READY/DOWN.

A node the dispatcher has not heard from for `grace` seconds is DOWN; a node
with an open session whose heartbeats are on time again is READY. Nodes never
heard from since this controller became leader get the grace period from that
moment, so agents can reconnect after a controller restart without flapping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from dockyard.controller.dispatcher import Dispatcher
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.state import ClusterState
from dockyard.controller.store import StoreError
from dockyard.v1.types_pb2 import NodeStatus

log = structlog.get_logger(__name__)

State = NodeStatus.State

# A node not heard from since this controller became leader gets at least this
# long: its agent may be waiting out a reconnect backoff (up to 10 s).
STARTUP_GRACE = 15.0


class NodeMonitor:
    def __init__(
        self,
        registry: NodeRegistry,
        dispatcher: Dispatcher,
        grace: float,
        persist_interval: float = 15.0,
        view: Callable[[], ClusterState | None] = lambda: None,
    ) -> None:
        """`view` gives the leader's cluster view, read instead of etcd on every tick."""
        self._registry = registry
        self._dispatcher = dispatcher
        self._grace = grace
        self._persist_interval = persist_interval
        self._view = view
        self._started = time.monotonic()

    async def run(self) -> None:
        """Check every node a few times per grace period until cancelled."""
        self._started = time.monotonic()
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
        changes: dict[str, tuple[State.ValueType, str]] = {}
        view = self._view()
        nodes = list(view.nodes.values()) if view is not None else await self._registry.list_all()
        for node in nodes:
            silent = self._dispatcher.seconds_since_seen(node.id, self._started)
            has_session = node.id in self._dispatcher.sessions
            seen = node.id in self._dispatcher.last_seen
            allowed = self._grace if seen else max(self._grace, STARTUP_GRACE)
            if node.status.state == State.READY and silent > allowed:
                changes[node.id] = (State.DOWN, f"no heartbeat for {silent:.1f} s")
            elif node.status.state != State.READY and has_session and silent <= self._grace:
                changes[node.id] = (State.READY, "heartbeats resumed")
        if changes:
            await self._registry.set_states(changes)

    async def _persist_heartbeats(self) -> None:
        beats = {
            node_id: self._dispatcher.last_seen[node_id].wall
            for node_id in self._dispatcher.sessions
            if node_id in self._dispatcher.last_seen
        }
        await self._registry.record_heartbeats(beats)
