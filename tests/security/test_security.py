"""Mutual TLS, join tokens and roles, end to end: a real controller (init, run),
real agents (join, run) and the real CLI. Every test stops what it started
(the cluster fixture does)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.common import pki
from dockyard.v1 import ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc
from dockyard.v1.ca_pb2 import RenewNodeCertificateRequest
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    ListNodesRequest,
    UpdateNodeRequest,
)
from dockyard.v1.dispatcher_pb2 import AgentMessage, Heartbeat, SessionHello, TaskStatusReport
from dockyard.v1.types_pb2 import GetVersionRequest, NodeSpec, TaskStatus
from tests.conftest import Cluster


def started(cluster_factory: Callable[..., Cluster], agents: int = 1, **kwargs: Any) -> Cluster:
    cluster = cluster_factory(**kwargs)
    cluster.start_controller()
    for i in range(1, agents + 1):
        cluster.start_agent(f"n{i}")
    cluster.wait_for(
        lambda: [n["status"]["state"] for n in cluster.nodes().values()] == ["READY"] * agents,
        f"{agents} nodes READY",
    )
    return cluster


def identity_dir(directory: Path, ca: pki.CertificateAuthority, cert: bytes, key: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return directory


def channel_with(
    cluster: Cluster, ca_pem: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.Channel:
    return grpc.secure_channel(cluster.address, grpc.ssl_channel_credentials(ca_pem, key, cert))


def node_channel(cluster: Cluster, state_dir: Path) -> grpc.Channel:
    files = state_dir / "pki"
    return channel_with(
        cluster,
        (files / "ca.pem").read_bytes(),
        (files / "node.pem").read_bytes(),
        (files / "node-key.pem").read_bytes(),
    )


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()  # type: ignore[no-any-return]


def cluster_ca(cluster: Cluster) -> pki.CertificateAuthority:
    return pki.CertificateAuthority.load(cluster.pki)


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    yield started(cluster_factory)


def test_no_certificate_another_ca_and_an_expired_one_are_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = cluster_ca(cluster)
    request = GetVersionRequest()
    ca_pem = ca.cert_pem
    with grpc.insecure_channel(cluster.address) as plain:
        assert (
            code_of(lambda: control_pb2_grpc.ControlStub(plain).GetVersion(request, timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    with channel_with(cluster, ca_pem) as no_cert:
        assert (
            code_of(lambda: control_pb2_grpc.ControlStub(no_cert).GetVersion(request, timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    other = pki.CertificateAuthority.create("other")
    with channel_with(cluster, ca_pem, *other.issue_pair(pki.ADMIN, "mallory")) as foreign:
        assert (
            code_of(lambda: control_pb2_grpc.ControlStub(foreign).GetVersion(request, timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    expired = ca.issue_pair(
        pki.ADMIN,
        "old",
        validity=dt.timedelta(hours=1),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2),
    )
    with channel_with(cluster, ca_pem, *expired) as old:
        assert (
            code_of(lambda: control_pb2_grpc.ControlStub(old).GetVersion(request, timeout=5))
            == grpc.StatusCode.UNAVAILABLE
        )
    # The same CA's valid admin certificate works: it was the certificates above.
    with channel_with(cluster, ca_pem, *ca.issue_pair(pki.ADMIN, "ok")) as good:
        assert control_pb2_grpc.ControlStub(good).GetVersion(request, timeout=5).version
    # The CLI says what is wrong in one line.
    result = cluster.run_tool(
        "dockyard", "-H", cluster.address, "--context", "default", "version", check=False
    )
    assert result.returncode == 1 and "TLS" in result.stderr, result.stderr
    bad = identity_dir(tmp_path / "expired", ca, *expired)
    result = cluster.run_tool(
        "dockyard", *cluster.tls_args(bad), "-H", cluster.address, "node", "ls", check=False
    )
    assert result.returncode == 1 and "cannot reach controller" in result.stderr


def test_the_agent_api_wants_an_admin_certificate_of_the_cluster(cluster: Cluster) -> None:
    agent = cluster.agent_address("n1")
    assert json.loads(cluster.cli("info", "-o", "json", host=agent).stdout)["kind"] == "agent"
    from dockyard.v1 import agent_pb2_grpc
    from dockyard.v1.agent_pb2 import GetAgentInfoRequest

    ca = cluster_ca(cluster)
    with grpc.secure_channel(agent, grpc.ssl_channel_credentials(ca.cert_pem)) as no_cert:
        assert (
            code_of(
                lambda: agent_pb2_grpc.AgentStub(no_cert).GetAgentInfo(
                    GetAgentInfoRequest(), timeout=5
                )
            )
            == grpc.StatusCode.UNAVAILABLE
        )
    node_cert, node_key = ca.issue_pair(pki.NODE, "someone")
    creds = grpc.ssl_channel_credentials(ca.cert_pem, node_key, node_cert)
    with grpc.secure_channel(agent, creds) as as_node:
        assert (
            code_of(
                lambda: agent_pb2_grpc.AgentStub(as_node).GetAgentInfo(
                    GetAgentInfoRequest(), timeout=5
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_read_only_user_reads_but_cannot_write(cluster: Cluster) -> None:
    out = cluster.root / "viewer"
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        "viewer",
        "--role",
        "read-only",
        "--state-dir",
        str(cluster.root / "controller"),
        "--out",
        str(out),
    )
    viewer = cluster.tls_args(out)
    listed = cluster.run_tool("dockyard", *viewer, "-H", cluster.address, "node", "ls")
    assert "n1" in listed.stdout
    denied = cluster.run_tool(
        "dockyard",
        *viewer,
        "-H",
        cluster.address,
        "node",
        "update",
        "--label-add",
        "x=1",
        "n1",
        check=False,
    )
    assert denied.returncode == 1 and "may not call UpdateNode" in denied.stderr, denied.stderr
    key, cert = (out / "key.pem").read_bytes(), (out / "cert.pem").read_bytes()
    with channel_with(cluster, (out / "ca.pem").read_bytes(), cert, key) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        assert stub.ListNodes(ListNodesRequest(), timeout=5).nodes
        assert (
            code_of(
                lambda: stub.UpdateNode(
                    UpdateNodeRequest(node="n1", spec=NodeSpec(name="n1")), timeout=5
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            code_of(lambda: stub.CreateService(CreateServiceRequest(), timeout=5))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    assert cluster.nodes()["n1"]["spec"].get("labels", {}) == {}
    # The context `user create` wrote works the same way.
    ctx = cluster.run_tool("dockyard", "--context", "viewer", "node", "ls", check=False)
    assert ctx.returncode == 0 and "n1" in ctx.stdout, ctx.stderr


def test_a_node_certificate_only_opens_its_own_session(cluster: Cluster) -> None:
    spare = cluster.root / "spare"
    cluster.join("spare", spare)
    n1_id = cluster.nodes()["n1"]["id"]
    with node_channel(cluster, spare) as channel:
        # Not the Control API ...
        assert (
            code_of(
                lambda: control_pb2_grpc.ControlStub(channel).ListNodes(
                    ListNodesRequest(), timeout=5
                )
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # ... and no session as another node.
        hello = AgentMessage(hello=SessionHello(node_id=n1_id, name="n1"))
        responses = dispatcher_pb2_grpc.DispatcherStub(channel).Session(iter([hello]), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            next(responses)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot open a session as node" in (raised.value.details() or "")
        # A node cannot sign itself another identity either.
        key = pki.new_key()
        renewed = ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
            RenewNodeCertificateRequest(csr_pem=pki.make_csr(key, n1_id)), timeout=5
        )
        assert pki.identity_of(renewed.cert_pem).id != n1_id
    assert cluster.node_state("n1") == "READY"


def test_a_node_cannot_report_another_nodes_task(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = started(cluster_factory, agents=2)
    cluster.cli(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "1",
        "--constraint",
        "node.name==n2",
        "--timeout",
        "30s",
        "busybox:latest",
        "sleep",
        "1000",
        timeout=90,
    )
    task = json.loads(cluster.cli("service", "ps", "web", "-o", "json").stdout)[0]
    assert task["status"]["state"] == "RUNNING"
    n1_id = cluster.nodes()["n1"]["id"]
    cluster.agents["n1"].kill()
    cluster.wait_for(lambda: cluster.node_state("n1") == "DOWN", "n1 DOWN")

    def messages() -> Iterator[AgentMessage]:
        yield AgentMessage(hello=SessionHello(node_id=n1_id, name="n1"))
        yield AgentMessage(
            task_status=TaskStatusReport(
                task_id=task["id"], status=TaskStatus(state=TaskStatus.FAILED, error="forged")
            )
        )
        for sequence in range(1, 4):
            yield AgentMessage(heartbeat=Heartbeat(sequence=sequence))
            time.sleep(0.5)

    with node_channel(cluster, cluster.root / "agent-n1") as channel:
        responses = dispatcher_pb2_grpc.DispatcherStub(channel).Session(messages(), timeout=10)
        assert next(responses).HasField("accepted")
        for _ in responses:
            pass
    time.sleep(0.5)
    after = json.loads(cluster.cli("service", "ps", "web", "-o", "json").stdout)
    assert [t["status"]["state"] for t in after if t["id"] == task["id"]] == ["RUNNING"]
    assert "forged" not in json.dumps(after)
    assert "task is not assigned to this node" in (
        cluster.controller.log() if cluster.controller else ""
    )


def test_a_removed_node_is_revoked_at_once(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = started(cluster_factory, agents=2)
    cluster.cli("node", "rm", "-f", "n1")
    agent = cluster.agents["n1"]
    assert agent.process is not None
    agent.process.wait(20)
    assert agent.process.returncode == 1
    assert "is revoked" in agent.log()
    hello = AgentMessage(hello=SessionHello(node_id="x", name="n1"))
    with node_channel(cluster, cluster.root / "agent-n1") as channel:
        responses = dispatcher_pb2_grpc.DispatcherStub(channel).Session(iter([hello]), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            next(responses)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert set(cluster.nodes()) == {"n2"} and cluster.node_state("n2") == "READY"


def test_used_up_rotated_and_expired_tokens_are_refused(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    admin = ["-H", cluster.address, *cluster.tls_args()]

    def token(*args: str) -> str:
        return cluster.run_tool("dockyard-controller", "token", *args, *admin).stdout.strip()

    once = token("create", "--role", "agent", "--max-uses", "1")
    assert once.startswith("DYTKN-1-" + cluster_ca(cluster).fingerprint + "-")
    cluster.join("a", cluster.root / "a", once)
    used = cluster.join("b", cluster.root / "b", once, check=False)
    assert used.returncode == 1 and "the join token is used up" in used.stderr
    first = token("create", "--role", "agent")
    new = token("rotate", "--role", "agent")
    rotated = cluster.join("c", cluster.root / "c", first, check=False)
    assert rotated.returncode == 1 and "not valid (unknown, or rotated)" in rotated.stderr
    cluster.join("d", cluster.root / "d", new)
    short = token("create", "--role", "agent", "--ttl", "1s")
    time.sleep(1.5)
    expired = cluster.join("e", cluster.root / "e", short, check=False)
    assert expired.returncode == 1 and "expired" in expired.stderr
    listing = cluster.run_tool("dockyard-controller", "token", "ls", *admin).stdout
    assert "agent" in listing and new.rsplit("-", 1)[1] not in listing  # no secrets shown
    for name in ("b", "c", "e"):
        assert not (cluster.root / name / "pki" / "node.pem").exists()
    key = cluster.root / "a" / "pki" / "node-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (cluster.pki / "ca-key.pem").stat().st_mode & 0o777 == 0o600


def test_join_refuses_a_ca_that_does_not_match_the_token(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    real = cluster.join_token()
    forged = "DYTKN-1-" + "ab" * 32 + "-" + real.rsplit("-", 1)[1]
    result = cluster.join("x", cluster.root / "x", forged, check=False)
    assert result.returncode == 1
    assert "does not match the join token's" in result.stderr
    assert "Nothing was sent" in result.stderr
    assert not (cluster.root / "x" / "pki").exists()


def test_without_init_or_join_the_daemons_say_what_to_do(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import BIN
    from tests.ports import free_port

    controller = subprocess.run(
        [
            str(BIN / "dockyard-controller"),
            "run",
            "--state-dir",
            str(tmp_path / "c"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert controller.returncode == 1
    assert "run `dockyard-controller init --state-dir" in controller.stderr
    agent = subprocess.run(
        [
            str(BIN / "dockyard-agent"),
            "run",
            "--state-dir",
            str(tmp_path / "a"),
            "--controller",
            f"127.0.0.1:{free_port()}",
            "--runtime",
            "hollow",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert agent.returncode == 1 and "run `dockyard-agent join --token" in agent.stderr


def test_insecure_mode_still_works_and_warns(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = started(cluster_factory, insecure=True)
    assert "INSECURE" in (cluster.controller.log() if cluster.controller else "")
    assert "INSECURE" in cluster.agents["n1"].log()
    assert cluster.node_state("n1") == "READY"


def test_the_node_certificate_is_renewed_before_it_expires(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    cluster.start_controller(["--cert-expiry", "12s"])
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
    cert_path = cluster.root / "agent-n1" / "pki" / "node.pem"
    first = pki.identity_of(cert_path.read_bytes())
    cluster.wait_for(
        lambda: pki.identity_of(cert_path.read_bytes()).serial != first.serial,
        "the certificate renewed",
        20,
    )
    renewed = pki.identity_of(cert_path.read_bytes())
    assert renewed.id == first.id and renewed.role == pki.NODE
    time.sleep(4)  # the first certificate has expired by now
    assert cluster.node_state("n1") == "READY"
    # The agent's API serves the renewed certificate too.
    agent = cluster.agent_address("n1")
    agent_info = json.loads(cluster.cli("info", "-o", "json", host=agent).stdout)
    assert agent_info["session_state"] == "connected"
    cluster.agents["n1"].kill()  # a new connection uses the renewed certificate
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY again")
