"""Revocation: `node rm` marks the node removed before anything else, so a renewal
racing with it is refused or revoked; every certificate (admin, read-only, controller,
node) is listed by `dockyard-controller cert ls` and revocable by serial, and a revoked
identity's next call, or its open session, ends. Real etcd, real controller and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from dockyard.common import pki
from dockyard.common.authz import AuthInterceptor
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.ca import ClusterCA, SubjectRemoved
from dockyard.controller.cluster import PolicyDenied
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.store import ISSUED_CERTS, REVOKED_CERTS, Store
from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import AgentMessage, Heartbeat, SessionHello
from dockyard.v1.peer_pb2 import BlobChunk, FetchBlobRequest
from dockyard.v1.peer_pb2_grpc import PeerServicer, PeerStub, add_PeerServicer_to_server
from tests.conftest import BIN, Cluster

NODE_ID = "0123456789abcdef0123"


@pytest.fixture
async def cluster_ca(etcd: EtcdServer) -> AsyncIterator[ClusterCA]:
    store = Store([etcd.endpoint], "/trust")
    await store.connect()
    try:
        yield ClusterCA(
            store,
            pki.CertificateAuthority.create(),
            dt.timedelta(days=1),
            lambda: ["127.0.0.1:7390"],
        )
    finally:
        await store.close()


def csr() -> bytes:
    return pki.make_csr(pki.new_key())


async def unrevoked(ca: ClusterCA, subject: str) -> list[str]:
    issued, _ = await ca.store.list_all(ISSUED_CERTS)
    revoked, _ = await ca.store.list_all(REVOKED_CERTS)
    gone = {r.serial for r in revoked}
    return [c.serial for c in issued if c.subject_id == subject and c.serial not in gone]


async def test_a_renewal_after_rm_is_refused_and_none_before_it_stays_valid(
    cluster_ca: ClusterCA,
) -> None:
    first = await cluster_ca.issue(csr(), pki.NODE, NODE_ID, [], "127.0.0.1")
    # The renewal's call passed the revocation check (the certificate was good), then
    # the node was removed before the renewal was recorded.
    await cluster_ca.revoke_subject(NODE_ID, "node removed")
    with pytest.raises(SubjectRemoved, match="was removed from the cluster"):
        await cluster_ca.issue(csr(), pki.NODE, NODE_ID, [], "127.0.0.1")
    assert await unrevoked(cluster_ca, NODE_ID) == []
    assert cluster_ca.is_revoked(pki.identity_of(first.cert_pem).serial)


async def test_another_controllers_revocation_right_after_the_list_is_seen(
    cluster_ca: ClusterCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch carries on from the listed revision: a revocation written at the very
    next revision (after the list, before the watch opened) is not skipped."""
    issued = await cluster_ca.issue(csr(), pki.NODE, NODE_ID, [], "127.0.0.1")
    serial = pki.identity_of(issued.cert_pem).serial
    listed_at = await cluster_ca.store.current_revision()
    await cluster_ca.revoke_serial(serial, "revoked by another controller")
    watcher = ClusterCA(
        cluster_ca.store, cluster_ca.ca, dt.timedelta(days=1), lambda: ["127.0.0.1:7390"]
    )
    list_all = cluster_ca.store.list_all

    async def listed_before_the_revocation(kind: object, at_revision: int = 0) -> object:
        if kind is REVOKED_CERTS:
            return [], listed_at
        return await list_all(kind, at_revision)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster_ca.store, "list_all", listed_before_the_revocation)
    changed = asyncio.Event()
    watcher.on_change = changed.set
    watching = asyncio.create_task(watcher.watch_revocations())
    try:
        async with asyncio.timeout(10):
            while not watcher.is_revoked(serial):
                await changed.wait()
                changed.clear()
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def test_renewals_racing_with_rm_leave_no_valid_certificate(
    cluster_ca: ClusterCA,
) -> None:
    for round_ in range(3):
        subject = f"{NODE_ID[:-1]}{round_}"
        await cluster_ca.issue(csr(), pki.NODE, subject, [], "127.0.0.1")

        async def renew(delay: float, subject: str = subject) -> str:
            await asyncio.sleep(delay)  # spread over the removal: before, during, after
            try:
                issued = await cluster_ca.issue(csr(), pki.NODE, subject, [], "127.0.0.1")
            except SubjectRemoved:
                return ""
            return pki.identity_of(issued.cert_pem).serial

        results = await asyncio.gather(
            *(renew(i * 0.004) for i in range(8)),
            cluster_ca.revoke_subject(subject, "node removed"),
        )
        granted = [serial for serial in results[:-1] if isinstance(serial, str) and serial]
        refused = [serial for serial in results[:-1] if serial == ""]
        assert await unrevoked(cluster_ca, subject) == [], results
        assert all(cluster_ca.is_revoked(serial) for serial in granted)
        assert len(granted) + len(refused) == 8


async def test_a_removed_node_cannot_register_again(cluster_ca: ClusterCA) -> None:
    registry = NodeRegistry(cluster_ca.store)
    await cluster_ca.revoke_subject(NODE_ID, "node removed")
    with pytest.raises(PolicyDenied, match="was removed from the cluster"):
        await registry.register(SessionHello(node_id=NODE_ID, name="back"), "ipv4:10.0.0.9:5")
    assert await registry.list_all() == []


async def test_a_serial_must_be_one_the_ca_issued(cluster_ca: ClusterCA) -> None:
    from dockyard.common.validation import ValidationError
    from dockyard.controller.store import NotFound

    with pytest.raises(ValidationError, match="serial"):
        await cluster_ca.revoke_serial("not-hex!", "")
    with pytest.raises(NotFound, match="no certificate with serial abc"):
        await cluster_ca.revoke_serial("abc", "")
    assert cluster_ca.revoked == {}


# ----------------------------------------------------------------- end to end


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    yield cluster


def admin(cluster: Cluster) -> list[str]:
    return ["-H", cluster.address, *cluster.tls_args()]


def certs(cluster: Cluster) -> list[list[str]]:
    out = cluster.run_tool("dockyard-controller", "cert", "ls", *admin(cluster)).stdout
    return [line.split(None, 5) for line in out.splitlines()[1:] if line.strip()]


def as_user(cluster: Cluster, identity: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dockyard"), *cluster.tls_args(identity), "-H", cluster.address, *args],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=30,
    )


def make_user(cluster: Cluster, name: str, role: str) -> tuple[Path, str]:
    out = cluster.root / "users" / name
    created = cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        name,
        "--role",
        role,
        "--state-dir",
        str(cluster.root / "controller"),
        "--out",
        str(out),
        "--context",
        name,
    ).stdout
    return out, created.rsplit("serial ", 1)[1].strip()


def test_a_revoked_admin_certificate_is_refused_on_its_next_call(cluster: Cluster) -> None:
    eve, serial = make_user(cluster, "eve", "admin")
    assert as_user(cluster, eve, "node", "ls").returncode == 0
    listed = {row[0]: row for row in certs(cluster)}
    assert listed[serial][1:3] == ["admin", "eve"] and listed[serial][5] == "valid"
    roles = {row[1] for row in listed.values()}
    assert {"admin", "controller"} <= roles, listed  # init's admin and the running controller

    cluster.run_tool(
        "dockyard-controller", "cert", "revoke", serial, "--reason", "left", *admin(cluster)
    )
    refused = as_user(cluster, eve, "node", "ls")
    assert refused.returncode == 1 and "is revoked" in refused.stderr, refused.stderr
    assert {row[0]: row for row in certs(cluster)}[serial][5] == "revoked: left"
    assert cluster.cli_ok("node", "ls")  # the other admin is untouched

    unknown = cluster.run_tool(
        "dockyard-controller", "cert", "revoke", "abc123", *admin(cluster), check=False
    )
    assert unknown.returncode == 1 and "no certificate with serial abc123" in unknown.stderr


def test_user_rm_revokes_a_read_only_user_and_read_only_cannot_list_certs(
    cluster: Cluster,
) -> None:
    viewer, serial = make_user(cluster, "viewer", "read-only")
    assert as_user(cluster, viewer, "node", "ls").returncode == 0
    denied = subprocess.run(
        [
            str(BIN / "dockyard-controller"),
            "cert",
            "ls",
            "-H",
            cluster.address,
            *cluster.tls_args(viewer),
        ],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=30,
    )
    assert denied.returncode == 1 and "may not call ListCertificates" in denied.stderr
    removed = cluster.run_tool("dockyard-controller", "user", "rm", "viewer", *admin(cluster))
    assert serial in removed.stdout
    refused = as_user(cluster, viewer, "node", "ls")
    assert refused.returncode == 1 and "is revoked" in refused.stderr, refused.stderr
    missing = cluster.run_tool(
        "dockyard-controller", "user", "rm", "nobody", *admin(cluster), check=False
    )
    assert missing.returncode == 1 and "no admin or read-only certificate" in missing.stderr


def test_revoking_a_node_certificate_ends_its_live_session(cluster: Cluster) -> None:
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
    node_id = cluster.nodes()["n1"]["id"]
    serial = pki.identity_of((cluster.root / "agent-n1" / "pki" / "node.pem").read_bytes()).serial
    assert [row[1:3] for row in certs(cluster) if row[0] == serial] == [["node", node_id]]
    cluster.run_tool("dockyard-controller", "cert", "revoke", serial, *admin(cluster))
    agent = cluster.agents["n1"]
    assert agent.process is not None
    agent.process.wait(20)  # the session ended, and the agent may not open another
    assert agent.process.returncode == 1
    assert "is revoked" in agent.log()


def test_node_rm_ends_a_live_session_at_once(cluster: Cluster) -> None:
    spare = cluster.root / "spare"
    cluster.join("spare", spare)
    node_id = pki.identity_of((spare / "pki" / "node.pem").read_bytes()).id
    files = spare / "pki"
    credentials = grpc.ssl_channel_credentials(
        (files / "ca.pem").read_bytes(),
        (files / "node-key.pem").read_bytes(),
        (files / "node.pem").read_bytes(),
    )

    def messages() -> Iterator[AgentMessage]:
        yield AgentMessage(hello=SessionHello(node_id=node_id, name="spare"))
        for sequence in range(1, 200):
            yield AgentMessage(heartbeat=Heartbeat(sequence=sequence))
            time.sleep(0.1)

    with grpc.secure_channel(
        cluster.address, credentials, [("grpc.ssl_target_name_override", pki.CONTROLLER_TLS_NAME)]
    ) as channel:
        responses = dispatcher_pb2_grpc.DispatcherStub(channel).Session(messages(), timeout=15)
        assert next(responses).HasField("accepted")
        cluster.wait_for(lambda: "spare" in cluster.nodes(), "spare registered")
        cluster.cli("node", "rm", "-f", "spare")
        ended: grpc.StatusCode = grpc.StatusCode.OK
        try:
            for _ in responses:
                pass
        except grpc.RpcError as exc:
            ended = exc.code()
        # Ended by the controller, not by the 15 s deadline.
        assert ended != grpc.StatusCode.DEADLINE_EXCEEDED
    assert "spare" not in cluster.nodes()
    assert json.loads(cluster.cli("node", "ls", "-o", "json").stdout) == []


# ------------------------------------------------------- streams of a revoked identity


class EndlessBlob(PeerServicer):
    """A blob that never ends: a chunk every 50 ms."""

    async def FetchBlob(
        self, request: FetchBlobRequest, context: object
    ) -> AsyncIterator[BlobChunk]:
        while True:
            yield BlobChunk(data=b"x" * 16)
            await asyncio.sleep(0.05)


async def test_a_stream_ends_when_its_certificate_is_revoked() -> None:
    """Whatever the method (a `logs -f`, an `exec`, a peer's blob, a node's session):
    the interceptor checks the list again at every message of a stream."""
    ca = pki.CertificateAuthority.create()
    server_cert, server_key = ca.issue_pair(pki.NODE, "server", sans=["127.0.0.1"])
    client_cert, client_key = ca.issue_pair(pki.NODE, "reader")
    revoked: set[str] = set()
    server = grpc.aio.server(interceptors=[AuthInterceptor(lambda s: s in revoked)])
    add_PeerServicer_to_server(EndlessBlob(), server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(server_key, server_cert)], root_certificates=ca.cert_pem, require_client_auth=True
        ),
    )
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(ca.cert_pem, client_key, client_cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            call = PeerStub(channel).FetchBlob(
                FetchBlobRequest(digest="sha256:" + "0" * 64), timeout=20
            )
            for _ in range(3):
                assert isinstance(await call.read(), BlobChunk)
            revoked.add(pki.identity_of(client_cert).serial)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                for _ in range(100):
                    await call.read()
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "is revoked" in (ended.value.details() or "")
    finally:
        await server.stop(0)
