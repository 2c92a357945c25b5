"""Joining a cluster with a token, for agents and controllers alike.

The controller's CA is read from the join port's TLS handshake without trusting
it, and its sha256 must equal the token's. Only then are the token and a CSR sent,
over TLS that trusts that CA alone. The private key is made here and never sent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.common import pki
from dockyard.common.addresses import split_host_port
from dockyard.common.authz import not_a_controller
from dockyard.v1.ca_pb2 import NodeCertificate

__all__ = [
    "CONTROLLER_OPTIONS",
    "JOIN_TIMEOUT",
    "JoinError",
    "fetch_ca_chain",
    "pinned_ca",
    "request_certificate",
]

JOIN_TIMEOUT = 15.0
CONTROLLER_OPTIONS = [("grpc.ssl_target_name_override", pki.CONTROLLER_TLS_NAME)]
"""Channel options that make TLS check the server for a controller's certificate (its
role), not for the address dialled: a node's certificate is refused."""


class JoinError(Exception):
    """Joining failed; the message says why and what to do."""


def fetch_ca_chain(address: str, timeout: float = JOIN_TIMEOUT) -> list[bytes]:
    """The certificates the server at `address` presents, unverified, as PEM."""
    host, port = split_host_port(address, 0)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            unverified = getattr(tls, "get_unverified_chain", None)
            chain = unverified() if unverified else tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except OSError as exc:
        raise JoinError(f"cannot reach the controller's join port at {address}: {exc}") from exc
    return [
        item if isinstance(item, bytes) else str(item.public_bytes()).encode()
        for item in chain or []
    ]


def pinned_ca(address: str, fingerprint: str) -> bytes:
    """The CA in the server's chain whose sha256 is `fingerprint`; JoinError if none is."""
    chain = fetch_ca_chain(address)
    seen = []
    for pem in chain:
        found = pki.fingerprint(pem)
        if found == fingerprint:
            return pem
        seen.append(found)
    raise JoinError(
        f"the controller at {address} presents a CA (sha256 {seen[-1] if seen else 'none'}) "
        f"that does not match the join token's ({fingerprint}): this is another cluster, "
        "or something is in between. Nothing was sent."
    )


async def request_certificate(
    address: str, token_text: str, hosts: list[str]
) -> tuple[NodeCertificate, ec.EllipticCurvePrivateKey]:
    """Redeem a join token at the controller's join port: a certificate with the role
    the token grants, the cluster's CA, and the private key made for it here."""
    from dockyard.v1 import ca_pb2_grpc
    from dockyard.v1.ca_pb2 import IssueNodeCertificateRequest

    try:
        token = pki.parse_token(token_text)
    except pki.TokenError as exc:
        raise JoinError(str(exc)) from exc
    ca_pem = await asyncio.to_thread(pinned_ca, address, token.ca_fingerprint)
    key = pki.new_key()
    request = IssueNodeCertificateRequest(
        token=token_text.strip(), csr_pem=pki.make_csr(key), hosts=hosts
    )
    async with grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(ca_pem), CONTROLLER_OPTIONS
    ) as channel:
        try:
            issued: NodeCertificate = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(
                request, timeout=JOIN_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            if not_a_controller(exc.details() or ""):
                raise JoinError(
                    f"the server at {address} holds a certificate of this cluster, but not "
                    "a controller's: refusing to join through it. Nothing was sent."
                ) from exc
            raise JoinError(
                f"the controller at {address} refused the join: {exc.details() or exc.code().name}"
            ) from exc
    if pki.fingerprint(issued.ca_pem) != token.ca_fingerprint:
        raise JoinError("the controller answered with another CA than the token's")
    return issued, key
