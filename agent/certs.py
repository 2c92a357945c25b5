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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from dockyard.common import pki
from dockyard.common.atomic_file import write_atomic
from dockyard.common.joining import (
    CONTROLLER_OPTIONS,
    JOIN_TIMEOUT,
    JoinError,
    request_certificate,
)
from dockyard.common.statedir import write_private

log = structlog.get_logger(__name__)

__all__ = ["JoinError", "NodePKI", "join", "renew_at", "renew_loop"]

PKI_DIR = "pki"
RETRY_SECONDS = 30.0


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

    @property
    def revoked(self) -> Path:
        return self.directory / "revoked.json"

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def load_revoked(self) -> frozenset[str]:
        """The revoked serials the controller last sent (none before the first map)."""
        try:
            return frozenset(str(s) for s in json.loads(self.revoked.read_text()))
        except (OSError, ValueError, TypeError):
            return frozenset()

    def save_revoked(self, serials: frozenset[str]) -> None:
        """Kept so the agent's API refuses them from its start, before a session opens."""
        write_atomic(self.revoked, (json.dumps(sorted(serials)) + "\n").encode())

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

    def save(
        self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, controllers: list[str] | None = None
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.ca, ca_pem)
        write_private(self.key, key_pem)  # the key first: the cert's mtime marks a change
        write_atomic(self.cert, cert_pem)
        if controllers is not None:
            joined = json.dumps({"controllers": controllers}, indent=2) + "\n"
            write_atomic(self.joined, joined.encode())


async def join(address: str, token_text: str, node_pki: NodePKI, hosts: list[str]) -> pki.Identity:
    """Exchange a join token and a CSR for a node certificate; save it all."""
    issued, key = await request_certificate(address, token_text, hosts)
    if issued.role != pki.NODE:
        raise JoinError(
            f"this is a {issued.role} join token: a controller joins with "
            "`dockyard-controller join`"
        )
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
            async with grpc.aio.secure_channel(
                target, node_pki.channel_credentials(), CONTROLLER_OPTIONS
            ) as channel:
                issued = await ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
                    RenewNodeCertificateRequest(csr_pem=pki.make_csr(key), hosts=hosts),
                    timeout=JOIN_TIMEOUT,
                )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "cert.renew_failed", controller=target, code=exc.code().name, reason=exc.details()
            )
            await asyncio.sleep(min(RETRY_SECONDS, max(1.0, -wait / 10 + 1)))
            continue
        node_pki.save(issued.ca_pem, issued.cert_pem, pki.key_pem(key))
        log.info(
            "cert.renewed",
            serial=node_pki.identity().serial,
            renew_at=renew_at(issued.cert_pem).isoformat(),
        )
