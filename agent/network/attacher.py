"""``NetworkAttacher``: this node's standalone containers on attachable cluster networks.

A container created through the agent's Docker API with ``--network N``, N a cluster
overlay network made ``--attachable``, is attached by the leader
(``Dispatcher.AttachNetwork``, controller/attachments.py), which gives it an address
there; the container is then created with that network in its ``overlays`` and joins it
as a task's container does (``OverlayManager.attach``; ``adopt`` after a restart). Its
removal releases the address (``DetachNetwork``); after a restart, the node's
attachments of containers that are gone are released (``PruneAttachments``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import structlog

from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AttachNetworkRequest,
    DetachNetworkRequest,
    PruneAttachmentsRequest,
)

__all__ = ["AttachError", "Attached", "NetworkAttacher"]

log = structlog.get_logger(__name__)

CALL_TIMEOUT = 15.0


class AttachError(Exception):
    """The controller refused (or could not be asked); ``code`` is its gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Attached:
    network_id: str
    network_name: str
    address: str
    subnet: str


class NetworkAttacher:
    """Args:
    node_id: This node's ID.
    channel: A new channel to the leading controller (the caller closes it).
    """

    def __init__(self, node_id: str, channel: Callable[[], grpc.aio.Channel]) -> None:
        self._node_id = node_id
        self._channel = channel

    async def attach(
        self, network: str, container_id: str, name: str, aliases: Sequence[str] = ()
    ) -> Attached:
        """The container's address on the cluster network ``network``.

        Raises:
            AttachError: refused (its code: NOT_FOUND, PERMISSION_DENIED...) or no answer.
        """
        request = AttachNetworkRequest(
            node_id=self._node_id,
            network=network,
            container_id=container_id,
            container_name=name,
            aliases=list(aliases),
        )
        try:
            async with self._channel() as channel:
                stub = dispatcher_pb2_grpc.DispatcherStub(channel)
                answer = await stub.AttachNetwork(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise AttachError(exc.details() or exc.code().name, exc.code()) from exc
        return Attached(
            answer.network.id, answer.network.spec.name, answer.address, answer.network.subnet
        )

    async def detach(self, container_id: str) -> int:
        """Release every attachment of the container (0 when it had none)."""
        request = DetachNetworkRequest(node_id=self._node_id, container_id=container_id)
        try:
            async with self._channel() as channel:
                stub = dispatcher_pb2_grpc.DispatcherStub(channel)
                answer = await stub.DetachNetwork(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise AttachError(exc.details() or exc.code().name, exc.code()) from exc
        return answer.detached

    async def prune(self, keep: Sequence[str]) -> int:
        """Release the node's attachments of containers other than ``keep``."""
        request = PruneAttachmentsRequest(node_id=self._node_id, container_ids=list(keep))
        try:
            async with self._channel() as channel:
                stub = dispatcher_pb2_grpc.DispatcherStub(channel)
                answer = await stub.PruneAttachments(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise AttachError(exc.details() or exc.code().name, exc.code()) from exc
        return answer.detached
