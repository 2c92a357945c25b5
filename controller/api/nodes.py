"""Node requests of the Control API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.sessions import SessionRegistry
from dockyard.controller.snapshot import ReadSnapshot, list_nodes
from dockyard.controller.state import ClusterState
from dockyard.v1.control_pb2 import (
    ListNodesRequest,
    ListNodesResponse,
    RemoveNodeRequest,
    UpdateNodeRequest,
)
from dockyard.v1.types_pb2 import Node


class NodesAPI:
    def __init__(
        self,
        registry: NodeRegistry,
        sessions: SessionRegistry,
        view: Callable[[], ClusterState | None] = lambda: None,
        revision: Callable[[], Awaitable[int]] | None = None,
        last_write: Callable[[], int] = lambda: 0,
    ) -> None:
        """`view` gives the leader's cluster view (None on a follower): a listing reads
        it, settled for a read against etcd's current revision (`revision`) and this
        controller's last write (`last_write`), not etcd."""
        self._registry = registry
        self._sessions = sessions
        self._view = view
        self._revision = revision or _no_revision
        self._last_write = last_write

    async def list(self, request: ListNodesRequest) -> ListNodesResponse:
        """A page of nodes (controller/snapshot.py): from the view's latest snapshot on
        the leader, from etcd on a follower."""
        view = self._view()
        snapshot = None
        if view is not None:  # as ServicesAPI._fresh_view
            await view.settle_for_read(await self._revision(), self._last_write())
            snapshot = view.board.latest
        if snapshot is None:
            nodes = {n.id: n for n in await self._registry.list_all()}
            snapshot = ReadSnapshot.of(0, nodes, {}, {}, {})
        # The response holds copies: the snapshot's records are never changed here.
        return list_nodes(snapshot, request, self.with_live_heartbeat)

    async def get(self, ref: str) -> Node:
        return self.with_live_heartbeat(await self._registry.find(ref))

    async def update(self, request: UpdateNodeRequest) -> Node:
        return await self._registry.update_spec(request.node, request.version, request.spec)

    async def remove(
        self, request: RemoveNodeRequest, revoke: Callable[[Node], Awaitable[object]] | None = None
    ) -> Node:
        """Revoke (`revoke`), then delete the record, then end the node's session."""
        node = await self._registry.remove(request.node, request.force, revoke)
        self._sessions.close(node.id)
        return node

    def with_live_heartbeat(self, node: Node) -> Node:
        """Heartbeats are persisted coarsely; the leader knows the latest one."""
        seen = self._sessions.last_seen(node.id)
        if seen is not None:
            stamp = now_timestamp()
            stamp.FromNanoseconds(int(seen.wall * 1e9))
            node.status.last_heartbeat.CopyFrom(stamp)
        return node


async def _no_revision() -> int:
    return 0
