"""The read port (`--read-listen`) over mutual TLS: the main port's roles, checked
in its own handlers (a real controller process with the cluster's CA)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import grpc

from dockyard.agent.certs import NodePKI
from dockyard.common import pki
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import ListNodesRequest, ListServicesRequest
from tests.conftest import Cluster
from tests.ports import free_port

TLS_NAME = [("grpc.ssl_target_name_override", pki.CONTROLLER_TLS_NAME)]


def test_the_read_port_serves_admins_and_refuses_nodes_and_strangers(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_factory()
    read_address = f"127.0.0.1:{free_port()}"
    cluster.start_controller(["--read-listen", read_address])
    with grpc.secure_channel(read_address, cluster.admin_credentials(), TLS_NAME) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        cluster.wait_for(lambda: _answers(stub), "the read port to answer")
        assert stub.ListServices(ListServicesRequest(), timeout=10).services == []
    cluster.join("reader-node", tmp_path / "node")
    node = NodePKI.of(tmp_path / "node")
    with grpc.secure_channel(read_address, node.channel_credentials(), TLS_NAME) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        try:
            stub.ListNodes(ListNodesRequest(), timeout=10)
            raise AssertionError("a node's certificate listed the nodes")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
    anonymous = grpc.ssl_channel_credentials((cluster.pki / "admin" / "ca.pem").read_bytes())
    with grpc.secure_channel(read_address, anonymous, TLS_NAME) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        try:
            stub.ListNodes(ListNodesRequest(), timeout=10)
            raise AssertionError("a caller without a certificate listed the nodes")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # the handshake fails


def _answers(stub: control_pb2_grpc.ControlStub) -> bool:
    try:
        stub.ListNodes(ListNodesRequest(), timeout=5)
        return True
    except grpc.RpcError:
        return False


def test_a_revoked_certificate_is_refused_by_the_reader_process(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """The reader process follows the revocations itself (its own watch): a revoked
    admin's next read on the read port is refused, as on the main port."""
    from tests.security.test_revocation import admin, make_user

    cluster = cluster_factory()
    read_address = f"127.0.0.1:{free_port()}"
    cluster.start_controller(["--read-listen", read_address])
    eve, serial = make_user(cluster, "eve", "admin")
    credentials = grpc.ssl_channel_credentials(
        (eve / "ca.pem").read_bytes(),
        (eve / "key.pem").read_bytes(),
        (eve / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(read_address, credentials, TLS_NAME) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        cluster.wait_for(lambda: _answers(stub), "the read port to answer eve")
        cluster.run_tool("dockyard-controller", "cert", "revoke", serial, *admin(cluster))
        cluster.wait_for(lambda: _refused(stub), "the read port to refuse eve's certificate")
    with grpc.secure_channel(read_address, cluster.admin_credentials(), TLS_NAME) as channel:
        assert _answers(control_pb2_grpc.ControlStub(channel))  # the other admin is untouched


def _refused(stub: control_pb2_grpc.ControlStub) -> bool:
    try:
        stub.ListNodes(ListNodesRequest(), timeout=5)
        return False
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "is revoked" in (
            exc.details() or ""
        )


def test_the_reader_http_port_serves_readers_and_refuses_nodes_and_strangers(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The reader process's HTTP port (--read-http-listen): HTTPS requiring a client
    certificate of the cluster CA, and the HTTP side's roles."""
    from tests.test_http_api import fetch, refused, tls_context

    cluster = cluster_factory()
    address = f"127.0.0.1:{free_port()}"
    cluster.start_controller(["--read-http-listen", address])
    url, ca = f"https://{address}/v1/services", cluster.pki / "admin" / "ca.pem"
    admin = tls_context(cluster.pki / "admin", ca)
    cluster.wait_for(lambda: _http_ok(url, admin), "the reader's HTTP port to answer")
    assert fetch(url, admin).json() == []
    assert refused(url, tls_context(None, ca))  # no client certificate
    other = pki.CertificateAuthority.create("other")
    cert, key = other.issue_pair(pki.ADMIN, "intruder")
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "cert.pem").write_bytes(cert)
    (tmp_path / "stranger" / "key.pem").write_bytes(key)
    assert refused(url, tls_context(tmp_path / "stranger", ca))  # another CA's admin
    assert refused(url.replace("https", "http"), tls_context(None, ca))  # plaintext
    cluster.join("http-reader-node", tmp_path / "node")
    node = ssl.create_default_context(cafile=str(ca))
    joined = NodePKI.of(tmp_path / "node")
    node.load_cert_chain(str(joined.directory / "node.pem"), str(joined.directory / "node-key.pem"))
    denied = fetch(url, node)
    assert denied.status == 403 and denied.json()["code"] == "PERMISSION_DENIED"
    assert fetch(f"https://{address}/healthz", node).status == 200


def _http_ok(url: str, context: ssl.SSLContext) -> bool:
    from tests.test_http_api import fetch

    try:
        return fetch(url, context, timeout=5).status == 200
    except OSError:
        return False
