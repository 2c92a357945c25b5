"""Certificates for the controller's embedded etcd: client TLS with client-certificate
authentication, so only this controller can read the cluster's state (its CA key,
secrets, join tokens), not any local user or host-network container that reaches the
loopback port.

The CA is made for this one etcd, not taken from the cluster CA: every node and user
certificate chains to the cluster CA, and etcd's `--client-cert-auth` admits any
certificate its trusted CA signed, so the cluster CA would let every node read etcd.
The cluster CA also lives in etcd, so it cannot be what etcd's start depends on.

A fresh CA, server and client certificate are made at every start of the controller
and the CA's key is never written: nothing else can ever be signed for this etcd, and
expiry is never a concern for a process that restarts with its controller. The files
live in `<state dir>/etcd/pki` (0700), every one 0600, so a tool run as the
controller's user (etcdctl, a test) can read them, and no one else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from dockyard.common import pki
from dockyard.common.statedir import ensure_private_dir, write_private

__all__ = ["EtcdTLS", "make_etcd_pki"]

_VALIDITY = dt.timedelta(days=3650)
_HOSTS = ["127.0.0.1", "::1", "localhost"]


@dataclass(frozen=True)
class EtcdTLS:
    """Where an embedded etcd's certificates are (see `make_etcd_pki`)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    def store_credentials(self) -> dict[str, bytes]:
        """`Store(..., **these)`: the CA to check etcd by, and the client's key pair."""
        return {
            "ca_cert": self.ca.read_bytes(),
            "cert_key": self.client_key.read_bytes(),
            "cert_chain": self.client_cert.read_bytes(),
        }

    def etcdctl_args(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.client_cert}", f"--key={self.client_key}"]


def make_etcd_pki(directory: Path) -> EtcdTLS:
    """A new CA (its key discarded), a server and a client certificate in `directory`."""
    ensure_private_dir(directory)
    tls = EtcdTLS(directory)
    ca = pki.CertificateAuthority.create("dockyard-etcd")
    server_cert, server_key = ca.issue_pair(
        pki.CONTROLLER, "embedded-etcd", validity=_VALIDITY, sans=_HOSTS
    )
    client_cert, client_key = ca.issue_pair(pki.CONTROLLER, "etcd-client", validity=_VALIDITY)
    for path, data in (
        (tls.ca, ca.cert_pem),
        (tls.server_cert, server_cert),
        (tls.server_key, server_key),
        (tls.client_cert, client_cert),
        (tls.client_key, client_key),
    ):
        write_private(path, data)
    return tls
