"""Node requests of the Control API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.common.timestamps import now_timestamp
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.sessions import SessionRegistry
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
        view = self._view()
        if view is not None:  # as ServicesAPI._fresh_view
            await view.settle_for_read(await self._revision(), self._last_write())
            found = sorted(view.nodes.values(), key=lambda n: n.id)
        else:
            found = await self._registry.list_all()
        # The response holds copies: the view's records are never changed here.
        response = ListNodesResponse(nodes=[n for n in found if _matches(n, request)])
        for node in response.nodes:
            self._with_live_heartbeat(node)
        return response

    async def get(self, ref: str) -> Node:
        return self._with_live_heartbeat(await self._registry.find(ref))

    async def update(self, request: UpdateNodeRequest) -> Node:
        return await self._registry.update_spec(request.node, request.version, request.spec)

    async def remove(
        self, request: RemoveNodeRequest, revoke: Callable[[Node], Awaitable[object]] | None = None
    ) -> Node:
        """Revoke (`revoke`), then delete the record, then end the node's session."""
        node = await self._registry.remove(request.node, request.force, revoke)
        self._sessions.close(node.id)
        return node

    def _with_live_heartbeat(self, node: Node) -> Node:
        """Heartbeats are persisted coarsely; the leader knows the latest one."""
        seen = self._sessions.last_seen(node.id)
        if seen is not None:
            stamp = now_timestamp()
            stamp.FromNanoseconds(int(seen.wall * 1e9))
            node.status.last_heartbeat.CopyFrom(stamp)
        return node


async def _no_revision() -> int:
    return 0


def _matches(node: Node, request: ListNodesRequest) -> bool:
    if request.names and node.spec.name not in request.names and node.id not in request.names:
        return False
    if request.states and node.status.state not in request.states:
        return False
    for label in request.labels:
        key, has_value, value = label.partition("=")
        if key not in node.spec.labels or (has_value and node.spec.labels[key] != value):
            return False
    return True
