"""The controller's embedded etcd admits only the controller: client TLS with client
certificates from a CA made for it (not the cluster CA), peers the same, both ports on
loopback, the certificates readable by the controller's user only."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.common.etcd_pki import EtcdTLS, make_etcd_pki
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.store import CLUSTER, Store, StoreUnavailable
from dockyard.v1.control_pb2 import GetInfoRequest
from tests.conftest import Cluster

ETCDCTL_ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["etcdctl", "--endpoints", endpoint, "--dial-timeout=2s", "--command-timeout=3s", *args],
        capture_output=True,
        text=True,
        env=ETCDCTL_ENV,
        timeout=30,
    )


def plain_store_refused(endpoint: str, **credentials: bytes) -> bool:
    async def attempt() -> bool:
        store = Store([endpoint], **credentials)
        try:
            await store.connect(3)
        except StoreUnavailable:
            return True
        await store.close()
        return False

    return asyncio.run(attempt())


def tls_handshake(port: int, context: ssl.SSLContext) -> bytes:
    """Send an HTTP request over TLS and return what came back (raises on refusal)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET /members HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        return conn.recv(4096)


def etcd_ports(state_dir: Path) -> tuple[int, int]:
    """The client and peer ports of the etcd whose data is under `state_dir`."""
    found = subprocess.run(
        ["pgrep", "-a", "-f", "--", f"--data-dir={state_dir}/etcd/data"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    args = found.split()
    client = next(a for a in args if a.startswith("--listen-client-urls="))
    peer = next(a for a in args if a.startswith("--listen-peer-urls="))
    assert client.startswith("--listen-client-urls=https://127.0.0.1:"), client
    assert peer.startswith("--listen-peer-urls=https://127.0.0.1:"), peer
    return int(client.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    yield cluster


def test_only_the_controller_reaches_its_embedded_etcd(cluster: Cluster, control: Any) -> None:
    state = cluster.root / "controller"
    endpoint = control.GetInfo(GetInfoRequest()).etcd_endpoints[0]
    tls = cluster.etcd_tls
    assert tls is not None
    client_port, peer_port = etcd_ports(state)
    assert endpoint == f"127.0.0.1:{client_port}"

    # no certificate: refused at the gRPC port, by etcdctl, and over HTTP
    assert plain_store_refused(endpoint)
    denied = etcdctl(endpoint, "get", "--prefix", "/dockyard/pki/ca")
    assert denied.returncode != 0 and not denied.stdout
    with_ca_only = ssl.create_default_context(cafile=str(tls.ca))
    with pytest.raises((ssl.SSLError, OSError)):
        tls_handshake(client_port, with_ca_only)
    assert plain_store_refused(endpoint, ca_cert=tls.ca.read_bytes())
    # a certificate from the cluster CA (the admin's; every node has one too): refused
    admin = cluster.pki / "admin"
    assert plain_store_refused(
        endpoint,
        ca_cert=tls.ca.read_bytes(),
        cert_key=(admin / "key.pem").read_bytes(),
        cert_chain=(admin / "cert.pem").read_bytes(),
    )
    # the peer port: loopback, TLS, and a client certificate too
    with pytest.raises((ssl.SSLError, OSError)):
        tls_handshake(peer_port, with_ca_only)
    with socket.create_connection(("127.0.0.1", peer_port), timeout=5) as raw:
        raw.sendall(b"GET /members HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert b'"peerURLs"' not in raw.recv(4096)

    # the controller's own certificate works, and the controller does
    allowed = etcdctl(
        endpoint, *tls.etcdctl_args(), "get", "--prefix", "--keys-only", "/dockyard/pki/ca"
    )
    assert allowed.returncode == 0 and "/dockyard/pki/ca" in allowed.stdout, allowed.stderr
    cluster.cli("service", "create", "-d", "--name", "web", "busybox", "sleep", "60")
    assert "web" in cluster.cli("service", "ls").stdout

    # readable by the controller's user only
    assert mode_of(state) == 0o700 and mode_of(tls.directory) == 0o700
    for path in tls.directory.iterdir():
        assert mode_of(path) == 0o600, path
    assert not list(tls.directory.glob("ca-key*"))  # the CA's key is never written


async def test_an_etcd_with_tls_refuses_a_plain_client_and_serves_its_own(tmp_path: Path) -> None:
    tls = await asyncio.to_thread(make_etcd_pki, tmp_path / "pki")
    server = EtcdServer(tmp_path / "data", log_path=tmp_path / "etcd.log", tls=tls)
    await server.start()
    try:
        store = Store([server.endpoint], **tls.store_credentials())
        await store.connect(5)
        try:
            assert await store.get_raw(CLUSTER, "id") is None
        finally:
            await store.close()
        plain = Store([server.endpoint])
        with pytest.raises(StoreUnavailable):
            await plain.connect(2)
        other = await asyncio.to_thread(make_etcd_pki, tmp_path / "other")
        stranger = Store(
            [server.endpoint],
            ca_cert=tls.ca.read_bytes(),
            cert_key=other.client_key.read_bytes(),
            cert_chain=other.client_cert.read_bytes(),
        )
        with pytest.raises(StoreUnavailable):
            await stranger.connect(2)
    finally:
        await server.stop()
    assert EtcdTLS(tmp_path / "pki").ca.exists()
