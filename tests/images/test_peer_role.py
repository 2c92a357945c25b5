"""A peer that serves blobs must hold a node certificate of the cluster: an admin's or a
read-only user's certificate (which also names localhost) cannot pose as a peer.

Real TLS on both ends, certificates from a real cluster CA; no registry is needed."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from dockyard.agent.containers.peer_servicer import PeerServicer
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.peer_fetch import PeerFetcher
from dockyard.common import pki
from dockyard.v1 import peer_pb2_grpc
from tests.ports import free_port

LOCAL = ["localhost", "127.0.0.1", "::1"]


async def serve_as(
    ca: pki.CertificateAuthority, role: str, blobs: BlobStore
) -> tuple[grpc.aio.Server, str]:
    """A Peer service presenting a certificate of ``role`` that names localhost."""
    cert, key = ca.issue_pair(role, f"{role}-server", sans=LOCAL)
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(PeerServicer(blobs), server)
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(
        address,
        grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca.cert_pem, require_client_auth=True
        ),
    )
    await server.start()
    return server, address


@pytest.mark.parametrize("role", [pki.ADMIN, pki.READ_ONLY, pki.CONTROLLER, pki.NODE])
async def test_only_a_node_certificate_serves_blobs(role: str, tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create()
    served = BlobStore(tmp_path / "served")
    digest = await served.put_bytes(b"layer bytes of the peer")
    cert, key = ca.issue_pair(pki.NODE, "n" * 20, sans=LOCAL)
    fetcher = PeerFetcher(lambda: grpc.ssl_channel_credentials(ca.cert_pem, key, cert))
    server, address = await serve_as(ca, role, served)
    target = BlobStore(tmp_path / "target")
    try:
        if role == pki.NODE:
            got = await fetcher.fetch_from(address, digest, target, None, size=23)
            assert got == 23 and target.has(digest)
            return
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fetcher.fetch_from(address, digest, target, None, size=23)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not target.has(digest)
        sources = fetcher.sources([address])
        assert sources is not None and await sources.fetch(digest, target, size=23) == ""
    finally:
        await server.stop(None)
