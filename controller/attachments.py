"""Standalone containers on attachable overlay networks (Swarm's ``docker run --network``).

An agent asks the leader (``Dispatcher.AttachNetwork``) when a container created through
its Docker API names a cluster network. The leader refuses a network that is not
``--attachable`` (naming it, as Docker does), else records the attachment
(``netattachments/<id>``: network, node, container, its name and aliases, and an
address), written under the term's fence like every task. The address is taken from the
top down, as a service's virtual IP is, skipping every VIP, task and attachment address:
the leader's orchestrator takes task addresses from the bottom up, so the two meet only
when the network is nearly full. The write compares that the network and every service
and attachment are as read, so a VIP or another attachment written meanwhile (or the
network's removal) makes it read again. The overlay map lists each attachment as an
endpoint and its container's name (and aliases) as names on the network; ``network rm``
is refused while one exists. ``DetachNetwork`` (the container removed) and
``PruneAttachments`` (an agent restarted and lists the containers it still has) delete
them, which frees their addresses.
"""

from __future__ import annotations

import secrets as token_source
from collections.abc import Iterable, Sequence

import structlog

from dockyard.common.validation import MAX_REF_LENGTH, ValidationError, check_name, check_ref
from dockyard.controller.errors import FailedPrecondition
from dockyard.controller.network_addresses import AddressExhausted, next_vip, used_addresses
from dockyard.controller.networks import MAX_ALIASES, NetworkRegistry
from dockyard.controller.state import ClusterState
from dockyard.controller.store import (
    NETWORK_ATTACHMENTS,
    NETWORKS,
    SERVICES,
    Conflict,
    Store,
)
from dockyard.v1.networks_pb2 import Network, NetworkAttachmentRecord
from dockyard.v1.workloads_pb2 import Service

__all__ = ["AttachmentRegistry", "NotAttachable"]

log = structlog.get_logger(__name__)

_ATTEMPTS = 5
MAX_CONTAINER_ID = 128


class NotAttachable(Exception):
    """The network does not take standalone containers (PERMISSION_DENIED)."""


def _check_container(container_id: str, name: str, aliases: Sequence[str]) -> None:
    if not container_id or len(container_id) > MAX_CONTAINER_ID or not container_id.isalnum():
        raise ValidationError(
            "container_id", f"a container ID of 1 to {MAX_CONTAINER_ID} letters and digits"
        )
    if name:
        check_name("container_name", name)
    if len(aliases) > MAX_ALIASES:
        raise ValidationError("aliases", f"at most {MAX_ALIASES} aliases")
    for index, alias in enumerate(aliases):
        check_name(f"aliases[{index}]", alias)


class AttachmentRegistry:
    """Args:
    store: The term's store (fenced: a write after leadership is lost fails whole).
    state: The leader's view (its live tasks' addresses).
    """

    def __init__(self, store: Store, state: ClusterState) -> None:
        self._store = store
        self._state = state
        self._networks = NetworkRegistry(store)

    async def attach(
        self,
        node_id: str,
        network_ref: str,
        container_id: str,
        name: str = "",
        aliases: Sequence[str] = (),
    ) -> tuple[Network, NetworkAttachmentRecord]:
        """The container's attachment to the network (the one it has, or a new one).

        Raises:
            NotAttachable: the network is not ``--attachable`` (or is the ingress one).
            NotFound: no such network.
            FailedPrecondition: the network has no free address left.
        """
        check_ref("node_id", node_id)
        check_ref("network", network_ref)
        _check_container(container_id, name, aliases)
        for _ in range(_ATTEMPTS):
            network = await self._networks.find(network_ref)
            if network.spec.ingress or not network.spec.attachable:
                raise NotAttachable(f"network {network.spec.name} not manually attachable")
            attachments, revision = await self._store.list_all(NETWORK_ATTACHMENTS)
            for held in attachments:
                if (held.node_id, held.container_id, held.network_id) == (
                    node_id,
                    container_id,
                    network.id,
                ):
                    return network, held
            services, _ = await self._store.list_all(SERVICES, at_revision=revision)
            record = NetworkAttachmentRecord(
                id=token_source.token_hex(12),
                network_id=network.id,
                node_id=node_id,
                container_id=container_id,
                container_name=name,
                aliases=list(aliases),
                address=self._address(network, services, attachments),
            )
            ops = [
                self._store.put_op(NETWORK_ATTACHMENTS, record.id, record, expect=0),
                self._store.check_op(NETWORKS, network.id, network.meta.version),
                self._store.unchanged_op(SERVICES, revision),
                self._store.unchanged_op(NETWORK_ATTACHMENTS, revision),
            ]
            try:
                record.meta.version = await self._store.commit(ops)
            except Conflict:
                continue  # a VIP, an attachment or the network changed: choose again
            log.info(
                "network.attached",
                network=network.spec.name,
                node_id=node_id,
                container_id=container_id[:12],
                address=record.address,
            )
            return network, record
        raise Conflict(f"network {network_ref} kept changing while attaching: try again")

    def _address(
        self,
        network: Network,
        services: Sequence[Service],
        attachments: Sequence[NetworkAttachmentRecord],
    ) -> str:
        used = used_addresses(services, self._state.tasks.values(), attachments)
        try:
            return next_vip(network, used.setdefault(network.id, set()))
        except AddressExhausted as exc:
            raise FailedPrecondition(str(exc)) from exc

    async def detach(self, node_id: str, container_id: str, network_ref: str = "") -> int:
        """Delete the container's attachments (every network's, or ``network_ref``'s);
        how many there were (0: none, which is no error)."""
        check_ref("node_id", node_id)
        if len(container_id) > MAX_REF_LENGTH:
            raise ValidationError("container_id", f"at most {MAX_REF_LENGTH} characters")
        network_id = (await self._networks.find(network_ref)).id if network_ref else ""
        attachments, _ = await self._store.list_all(NETWORK_ATTACHMENTS)
        gone = [
            a
            for a in attachments
            if a.node_id == node_id
            and a.container_id == container_id
            and (not network_id or a.network_id == network_id)
        ]
        return await self._delete(gone)

    async def prune(self, node_id: str, keep: Iterable[str]) -> int:
        """Delete the node's attachments whose container is not in ``keep``."""
        check_ref("node_id", node_id)
        kept = set(keep)
        attachments, _ = await self._store.list_all(NETWORK_ATTACHMENTS)
        gone = [a for a in attachments if a.node_id == node_id and a.container_id not in kept]
        return await self._delete(gone)

    async def _delete(self, gone: Sequence[NetworkAttachmentRecord]) -> int:
        if not gone:
            return 0
        ops = [self._store.raw_op(NETWORK_ATTACHMENTS, a.id, None, expect=None) for a in gone]
        await self._store.commit(ops)
        for record in gone:
            log.info(
                "network.detached",
                network_id=record.network_id,
                node_id=record.node_id,
                container_id=record.container_id[:12],
                address=record.address,
            )
        return len(gone)
