"""The node's certificate: joining the cluster with a token, TLS credentials, renewal.

`join` learns the controller's CA from the TLS handshake (no verification yet),
checks its sha256 against the token, then asks for a node certificate over TLS
that trusts only that CA. The private key is made here, written 0600 and never
sent. Afterwards every connection is mutual TLS with the files in STATE/pki.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from dockyard.common import pki
from dockyard.common.addresses import split_host_port

log = structlog.get_logger(__name__)

PKI_DIR = "pki"
JOIN_TIMEOUT = 15.0
RETRY_SECONDS = 30.0


class JoinError(Exception):
    """Joining failed; the message says why and what to do."""


@dataclass(frozen=True)
class NodePKI:
    """The node's TLS files under its state dir."""

    directory: Path

    @classmethod
    def of(cls, state_dir: Path) -> NodePKI:
        return cls(state_dir / PKI_DIR)

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "node.pem"

    @property
    def key(self) -> Path:
        return self.directory / "node-key.pem"

    @property
    def joined(self) -> Path:
        return self.directory / "join.json"

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def identity(self) -> pki.Identity:
        return pki.identity_of(self.cert.read_bytes())

    def controllers(self) -> list[str]:
        if not self.joined.exists():
            return []
        return [str(c) for c in json.loads(self.joined.read_text()).get("controllers", [])]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Read from disk each time, so a renewed certificate is used by the next connection."""
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """The agent's own API: mutual TLS, clients need a certificate from the cluster CA.

        The files are looked at on every handshake, so a renewed certificate is
        served from the next connection on, without a restart.
        """
        loaded = {"mtime": self.cert.stat().st_mtime_ns}

        def configuration() -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(self.key.read_bytes(), self.cert.read_bytes())],
                root_certificates=self.ca.read_bytes(),
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            try:
                mtime = self.cert.stat().st_mtime_ns
                if mtime == loaded["mtime"]:
                    return None
                loaded["mtime"] = mtime
                return configuration()
            except OSError:
                return None

        # None means "no change" (grpc's documented contract; the stub says otherwise).
        return grpc.dynamic_ssl_server_credentials(configuration(), fetch, True)  # type: ignore[arg-type]

    def save(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
             controllers: list[str] | None = None) -> None:  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca.write_bytes(ca_pem)
        pki.write_private(self.key, key_pem)  # the key first: the cert's mtime marks a change
        tmp = self.cert.with_name("node.pem.tmp")
        tmp.write_bytes(cert_pem)
        tmp.replace(self.cert)
        if controllers is not None:
            self.joined.write_text(json.dumps({"controllers": controllers}, indent=2) + "\n")


def fetch_ca_chain(address: str, timeout: float = JOIN_TIMEOUT) -> list[bytes]:
    """The certificates the server at `address` presents, unverified, as PEM."""
    host, port = split_host_port(address, 0)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host) as tls:  # fmt: skip
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


async def join(
    address: str, token_text: str, node_pki: NodePKI, hosts: list[str]
) -> pki.Identity:
    """Exchange a join token and a CSR for a node certificate; save it all."""
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
    async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca_pem)) as channel:
        try:
            issued = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(
                request, timeout=JOIN_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise JoinError(
                f"the controller at {address} refused to join this node: "
                f"{exc.details() or exc.code().name}"
            ) from exc
    if pki.fingerprint(issued.ca_pem) != token.ca_fingerprint:
        raise JoinError("the controller answered with another CA than the token's")
    node_pki.save(issued.ca_pem, issued.cert_pem, pki.key_pem(key), list(issued.controllers))
    return node_pki.identity()


def renew_at(cert_pem: bytes) -> dt.datetime:
    """When to renew: once a third of the certificate's lifetime is left."""
    cert = pki.load_cert(cert_pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - lifetime / 3


async def renew_loop(node_pki: NodePKI, controller: Callable[[], str], hosts: list[str]) -> None:
    """Renew the node certificate before it expires, with the current one.

    The new certificate and key replace the files; open sessions keep their
    channel, the next connection uses the new ones.
    """
    from dockyard.v1 import ca_pb2_grpc
    from dockyard.v1.ca_pb2 import RenewNodeCertificateRequest

    while True:
        due = renew_at(node_pki.cert.read_bytes())
        wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
        if wait > 0:
            await asyncio.sleep(min(wait, 3600.0))
            continue
        target = controller()
        key = pki.new_key()
        try:
            async with grpc.aio.secure_channel(target, node_pki.channel_credentials()) as channel:
                issued = await ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
                    RenewNodeCertificateRequest(csr_pem=pki.make_csr(key), hosts=hosts),
                    timeout=JOIN_TIMEOUT,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning("cert.renew_failed", controller=target, code=exc.code().name,
                        reason=exc.details())  # fmt: skip
            await asyncio.sleep(min(RETRY_SECONDS, max(1.0, -wait / 10 + 1)))
            continue
        node_pki.save(issued.ca_pem, issued.cert_pem, pki.key_pem(key))
        log.info("cert.renewed", serial=node_pki.identity().serial,
                 renew_at=renew_at(issued.cert_pem).isoformat())  # fmt: skip
