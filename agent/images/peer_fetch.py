"""Fetching image blobs from other nodes' agents before going to the registry.

The controller names, per image, a few nodes that run it now (``ImageSources`` in the
assignment set). A pull asks them in turn for each blob it lacks (Peer.FetchBlob); the
bytes go through the same verified writer as a registry download, so a peer that sends
anything else than the digest's content is skipped and nothing of it is kept. A peer
that is down, slow to answer or without the blob costs at most ``CONNECT_TIMEOUT``;
when no peer has it, the registry does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import structlog

from dockyard.agent.images.blobs import BlobStore
from dockyard.common.distribution.errors import ImageError
from dockyard.common.distribution.registry import ByteProgress
from dockyard.common.pki import NODE, role_host
from dockyard.v1.peer_pb2 import BlobChunk, FetchBlobRequest
from dockyard.v1.peer_pb2_grpc import PeerStub

__all__ = ["CONNECT_TIMEOUT", "IDLE_TIMEOUT", "TLS_NAME", "PeerFetcher", "PeerSources"]

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 3.0
"""Seconds for a peer to connect and send the first chunk (or say it has no such blob)."""
IDLE_TIMEOUT = 10.0
"""Seconds a peer may stay silent in the middle of a blob before it is given up."""
TLS_NAME = role_host(NODE)
"""The name checked in a peer's certificate: the node role's DNS name, which the CA puts
in node certificates only (`pki.role_host`). Which node answers does not matter (the
content is checked against its digest), but it must be a node: an admin's or a read-only
user's certificate also names localhost, and its holder must not pose as a peer."""

Credentials = Callable[[], grpc.ChannelCredentials]


class PeerFetcher:
    """Args:
    credentials: This node's client credentials (its node certificate), read at each
        connection so a renewed certificate is used; None for plaintext (``--insecure``).
    """

    def __init__(self, credentials: Credentials | None) -> None:
        self._credentials = credentials

    def sources(self, addresses: Sequence[str]) -> PeerSources | None:
        """The peers to ask for one pull; None when there are none."""
        return PeerSources(self, tuple(addresses)) if addresses else None

    async def fetch_from(
        self,
        address: str,
        digest: str,
        blobs: BlobStore,
        on_bytes: ByteProgress | None,
        *,
        size: int | None = None,
        limit: int | None = None,
    ) -> int:
        """Store blob ``digest`` as ``address`` serves it; its size.

        ``size`` is the size the manifest declared (a peer that sends a byte more is cut
        off), ``limit`` caps a blob whose size is not declared.

        Raises:
            grpc.aio.AioRpcError: the peer refused (NOT_FOUND: it has no such blob).
            TimeoutError: the peer did not answer in time.
            DigestMismatch: the bytes were not the blob's (nothing was kept).
            SizeMismatch: more or fewer bytes than declared, or over ``limit``.
        """
        async with self._channel(address) as channel:
            call = PeerStub(channel).FetchBlob(FetchBlobRequest(digest=digest))
            try:
                async with blobs.writer(
                    digest, f"blob {digest} from node {address}", size=size, limit=limit
                ) as out:
                    timeout = CONNECT_TIMEOUT
                    while True:
                        chunk = await asyncio.wait_for(call.read(), timeout)
                        if not isinstance(chunk, BlobChunk):  # grpc.aio.EOF: the end
                            break
                        timeout = IDLE_TIMEOUT
                        await out.write(chunk.data)
                        if on_bytes is not None:
                            on_bytes(out.written)
                return out.written
            finally:
                call.cancel()

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(
            address, self._credentials(), [("grpc.ssl_target_name_override", TLS_NAME)]
        )


@dataclass(frozen=True)
class PeerSources:
    """The peers one pull may fetch from, in the order to ask them."""

    fetcher: PeerFetcher
    addresses: tuple[str, ...]

    async def fetch(
        self,
        digest: str,
        blobs: BlobStore,
        on_bytes: ByteProgress | None = None,
        *,
        size: int | None = None,
        limit: int | None = None,
    ) -> str:
        """Store blob ``digest`` from the first peer that has it; that peer's address, or
        "" when none served it (each failure is logged). ``size`` and ``limit`` bound
        what a peer may send, as for `PeerFetcher.fetch_from`."""
        for address in self.addresses:
            started = time.monotonic()
            try:
                got = await self.fetcher.fetch_from(
                    address, digest, blobs, on_bytes, size=size, limit=limit
                )
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "peer.blob_fetch_failed",
                    peer=address,
                    digest=digest,
                    code=exc.code().name,
                    error=exc.details(),
                )
                continue
            except (TimeoutError, ImageError) as exc:
                log.info(
                    "peer.blob_fetch_failed",
                    peer=address,
                    digest=digest,
                    error=str(exc) or "timed out",
                )
                continue
            log.info(
                "blob.fetched_from_peer",
                peer=address,
                digest=digest,
                size=got,
                seconds=round(time.monotonic() - started, 3),
            )
            return address
        return ""
