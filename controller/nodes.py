"""The node registry: node records in the store and the name index beside them.

A node's name is unique in the cluster: a second key, `names/nodes/<name>`,
holds the owning node ID and is written in the same transaction as the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable

import structlog

from dockyard.common.lookup import match_reference
from dockyard.common.states import NodeState
from dockyard.common.timestamps import now_timestamp
from dockyard.common.validation import ValidationError, check_labels, check_name, check_ref
from dockyard.controller.cluster import PolicyDenied
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.store import (
    NODE_NAMES,
    NODES,
    REMOVED_SUBJECTS,
    AlreadyExists,
    Conflict,
    NotFound,
    Op,
    Store,
)
from dockyard.controller.subnets import (
    CoversAddress,
    Protected,
    SubnetPool,
    host_of_peer,
    protected_address,
)
from dockyard.v1.dispatcher_pb2 import SessionHello
from dockyard.v1.types_pb2 import Node, NodeDescription, NodeNetwork, NodeSpec, NodeStatus

log = structlog.get_logger(__name__)

NODE_ID_PATTERN = re.compile(r"^[a-z0-9]{8,64}$")
CONFLICT_RETRIES = 8


class NodeRegistry:
    def __init__(
        self,
        store: Store,
        subnets: SubnetPool | None = None,
        protected: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        """Args:
        protected: The cluster's own addresses (``host:port`` of controllers and etcd
            endpoints) that no node subnet may cover; nodes' addresses are added.
        """
        self._store = store
        self._subnets = subnets or SubnetPool()
        self._protected = protected
        # Subnets are handed out one at a time (only the leader registers nodes).
        self._subnet_lock = asyncio.Lock()

    async def list_all(self) -> list[Node]:
        nodes, _ = await self._store.list_all(NODES)
        return nodes

    async def get(self, node_id: str) -> Node:
        return await self._store.get(NODES, node_id)

    async def find(self, ref: str) -> Node:
        """A node by ID, name or unique ID prefix, as docker resolves references."""
        check_ref("node", ref)
        matches = match_reference(ref, await self.list_all(), lambda n: n.id, lambda n: n.spec.name)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ValidationError(
                "node", f"node ID prefix {ref!r} is ambiguous ({len(matches)} nodes)"
            )
        raise NotFound(f"node {ref!r} not found")

    # -- agent sessions --------------------------------------------------------

    async def register(self, hello: SessionHello, remote_address: str) -> Node:
        """Record that an agent opened a session: the node becomes READY.

        A new node ID claims its name; a name already held by another node is
        refused with a message saying who holds it.
        """
        if not NODE_ID_PATTERN.match(hello.node_id):
            raise ValidationError("hello.node_id", f"invalid node ID {hello.node_id!r}")
        check_name("hello.name", hello.name)
        for _ in range(CONFLICT_RETRIES):
            try:
                existing: Node | None = await self._store.get(NODES, hello.node_id)
            except NotFound:
                existing = None
            # Only a node that needs a subnet waits for the others' to be handed out.
            needs = _needs_subnet(existing, hello.description)
            async with self._subnet_lock if needs else contextlib.nullcontext():
                if existing is None:
                    return await self._create(hello, remote_address)
                existing.description.CopyFrom(hello.description)
                _set_state(existing.status, NodeState.READY, "session open")
                existing.status.last_heartbeat.CopyFrom(now_timestamp())
                existing.status.remote_address = remote_address
                await self._place_on_network(existing, remote_address)
                try:
                    await self._store.update(NODES, existing.id, existing)
                    return existing
                except Conflict:
                    continue
        raise Conflict(f"node {hello.node_id}: too many concurrent writes, retry")

    async def _place_on_network(self, node: Node, remote_address: str) -> None:
        """Give the node its subnet on the cluster network and the address to route to."""
        current, wanted = node.network, node.description
        if not wanted.bridge_subnet:
            network = NodeNetwork(message="the agent has no bridge network")
        elif current.subnet and current.subnet == wanted.bridge_subnet:
            network = NodeNetwork(subnet=current.subnet)  # what it has and uses: keep it
        else:
            nodes = await self.list_all()
            others = [(n.id, n.network.subnet) for n in nodes]
            try:
                network = self._subnets.assign(
                    node.id, current, wanted, others, self._guarded(node, nodes, remote_address)
                )
            except CoversAddress as exc:
                raise ValidationError("hello.description.bridge_subnet", str(exc)) from None
        network.address = host_of_peer(remote_address)
        if network.subnet != current.subnet or network.message != current.message:
            log.info(
                "node.subnet",
                node_id=node.id,
                subnet=network.subnet,
                address=network.address,
                message=network.message,
            )
        node.network.CopyFrom(network)

    def _guarded(self, node: Node, nodes: list[Node], remote_address: str) -> list[Protected]:
        """The addresses a node subnet may not cover: controllers', etcd's, nodes'."""
        items = [protected_address("a controller or etcd endpoint", a) for a in self._protected()]
        items += [
            protected_address(f"node {n.id[:12]}", n.network.address)
            for n in nodes
            if n.id != node.id and n.network.address
        ]
        items.append(protected_address("this node's host", host_of_peer(remote_address)))
        return [item for item in items if item is not None]

    async def _create(self, hello: SessionHello, remote_address: str) -> Node:
        await self._refuse_removed(hello.node_id)
        await self._refuse_taken_name(hello.name, hello.node_id)
        node = Node(id=hello.node_id)
        node.spec.name = hello.name
        node.spec.availability = NodeSpec.ACTIVE
        node.description.CopyFrom(hello.description)
        _set_state(node.status, NodeState.READY, "session open")
        node.status.last_heartbeat.CopyFrom(now_timestamp())
        node.status.remote_address = remote_address
        await self._place_on_network(node, remote_address)
        ops = [
            self._store.put_op(NODES, node.id, node, expect=0),
            self._store.raw_op(NODE_NAMES, node.spec.name, node.id.encode(), expect=0),
            self._store.check_op(REMOVED_SUBJECTS, node.id, 0),
        ]
        try:
            revision = await self._store.commit(ops)
        except Conflict as exc:
            await self._refuse_removed(hello.node_id)
            await self._refuse_taken_name(hello.name, hello.node_id)
            raise Conflict(f"node {node.id} was registered concurrently, retry") from exc
        node.meta.version = revision
        log.info("node.registered", node_id=node.id, name=node.spec.name)
        return node

    async def _refuse_removed(self, node_id: str) -> None:
        """A node removed with `node rm` does not come back under its ID."""
        if await self._store.get_raw(REMOVED_SUBJECTS, node_id) is not None:
            raise PolicyDenied(
                f"node {node_id} was removed from the cluster (its "
                "certificates are revoked): join it again with a new token"
            )

    async def _refuse_taken_name(self, name: str, node_id: str) -> None:
        holder = await self._store.get_raw(NODE_NAMES, name)
        if holder is None or holder[0].decode() == node_id:
            return
        holder_id = holder[0].decode()
        try:
            owner = await self._store.get(NODES, holder_id)
        except NotFound:
            return
        state = NodeStatus.State.Name(owner.status.state)
        if owner.status.state == NodeState.READY:
            raise AlreadyExists(
                f"node name {name!r} is held by live node {holder_id[:12]} ({state}); "
                "start this agent with another --name"
            )
        raise AlreadyExists(
            f"node name {name!r} belongs to node {holder_id[:12]} ({state}); remove it first "
            f"with `dockyard node rm {name}`, or start this agent with another --name"
        )

    async def set_states(self, changes: dict[str, tuple[NodeState.ValueType, str]]) -> list[Node]:
        """Move nodes to new states in as few transactions as possible.

        Nodes whose record changed meanwhile are read again and retried.
        """
        changed: list[Node] = []
        pending = dict(changes)
        for _ in range(CONFLICT_RETRIES):
            if not pending:
                break
            nodes = [n for n in await self.list_all() if n.id in pending]
            ops: list[Op] = []
            for node in nodes:
                state, message = pending[node.id]
                _set_state(node.status, state, message)
                ops.append(self._store.put_op(NODES, node.id, node, expect=node.meta.version))
            results = await self._store.commit_each(ops)
            for node, ok in zip(nodes, results, strict=True):
                if ok:
                    changed.append(node)
                    del pending[node.id]
                    log.info(
                        "node.state",
                        node_id=node.id,
                        name=node.spec.name,
                        state=NodeStatus.State.Name(node.status.state),
                        message=node.status.message,
                    )
            pending = {k: v for k, v in pending.items() if k in {n.id for n in nodes}}
        return changed

    async def record_heartbeats(self, beats: dict[str, float]) -> None:
        """Persist last-heartbeat times (wall clock seconds), coarsely and in batches."""
        nodes = [n for n in await self.list_all() if n.id in beats]
        ops = []
        for node in nodes:
            node.status.last_heartbeat.FromNanoseconds(int(beats[node.id] * 1e9))
            ops.append(self._store.put_op(NODES, node.id, node, expect=node.meta.version))
        if ops:
            await self._store.commit_each(ops)

    # -- operator requests -------------------------------------------------------

    async def update_spec(self, ref: str, version: int, spec: NodeSpec) -> Node:
        check_name("spec.name", spec.name)
        check_labels("spec.labels", dict(spec.labels))
        if spec.availability == NodeSpec.AVAILABILITY_UNSPECIFIED:
            raise ValidationError("spec.availability", "must be active, pause or drain")
        if spec.availability not in NodeSpec.Availability.values():
            raise ValidationError("spec.availability", f"unknown value {spec.availability}")
        if version <= 0:
            raise ValidationError("version", "must be the version the node was read at")
        node = await self.find(ref)
        if node.meta.version != version:
            raise Conflict(
                f"node {node.spec.name} changed since it was read (version {version}, "
                f"now {node.meta.version}): read it again and retry"
            )
        old_name = node.spec.name
        node.spec.CopyFrom(spec)
        ops = [self._store.put_op(NODES, node.id, node, expect=version)]
        if spec.name != old_name:
            await self._refuse_taken_name(spec.name, node.id)
            ops.append(self._store.raw_op(NODE_NAMES, old_name, None, expect=None))
            ops.append(self._store.raw_op(NODE_NAMES, spec.name, node.id.encode(), expect=0))
        try:
            node.meta.version = await self._store.commit(ops)
        except Conflict as exc:
            raise Conflict(
                f"node {old_name} changed while it was being updated: read it again and retry"
            ) from exc
        log.info("node.updated", node_id=node.id, name=node.spec.name)
        return node

    async def remove(
        self, ref: str, force: bool, revoke: Callable[[Node], Awaitable[object]] | None = None
    ) -> Node:
        """Remove a node's record; `revoke` (its certificates) runs first, so nothing
        the node sends is trusted by the time its record is gone."""
        node = await self.find(ref)
        if node.status.state == NodeState.READY and not force:
            raise FailedPrecondition(
                f"node {node.spec.name} is READY: stop its agent first, or use --force"
            )
        if revoke is not None:
            await revoke(node)
        await self._store.commit(
            [
                self._store.raw_op(NODES, node.id, None, expect=node.meta.version),
                self._store.raw_op(NODE_NAMES, node.spec.name, None, expect=None),
            ]
        )
        log.info("node.removed", node_id=node.id, name=node.spec.name, forced=force)
        return node


def _needs_subnet(node: Node | None, description: NodeDescription) -> bool:
    """Whether registering the node may hand out a subnet (else it keeps what it has)."""
    return bool(description.bridge_subnet) and (
        node is None or node.network.subnet != description.bridge_subnet
    )


def _set_state(status: NodeStatus, state: NodeState.ValueType, message: str) -> None:
    if status.state != state:
        status.state_changed_at.CopyFrom(now_timestamp())
    status.state = state
    status.message = message
