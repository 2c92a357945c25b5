"""Nodes are not controllers: a node certificate names only what the controller vouches
for (its ID, loopback, the address it was seen at), and whoever expects a controller (an
agent's session, a join, the CLI) refuses a server whose certificate is a node's, even
one from the cluster's CA on the very address dialled."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.agent.certs import NodePKI
from dockyard.agent.identity import NodeIdentity
from dockyard.agent.session import ControllerSession
from dockyard.common import pki
from dockyard.common.backoff import Backoff
from dockyard.common.joining import JoinError, request_certificate
from dockyard.common.validation import ValidationError
from dockyard.controller.ca import node_sans
from dockyard.v1 import ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc
from dockyard.v1.ca_pb2 import NodeCertificate
from dockyard.v1.control_pb2 import ListNodesResponse
from dockyard.v1.dispatcher_pb2 import DispatcherMessage, SessionAccepted
from dockyard.v1.types_pb2 import Node, NodeDescription
from tests.conftest import Cluster
from tests.ports import free_port


def sans(pem: bytes) -> set[str]:
    names = pki.load_cert(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(v) for v in names.value.get_values_for_type(x509.DNSName)} | {
        str(v) for v in names.value.get_values_for_type(x509.IPAddress)
    }


def test_every_certificate_names_its_role_and_no_other() -> None:
    ca = pki.CertificateAuthority.create()
    for role in pki.ROLES:
        cert, _ = ca.issue_pair(role, "x1")
        assert pki.role_host(role) in sans(cert)
        others = {pki.role_host(r) for r in pki.ROLES if r != role}
        assert not sans(cert) & others
    for sneaky in ("dockyard-controller", "DOCKYARD-Controller"):
        with pytest.raises(pki.PKIError, match="names a role"):
            ca.issue_pair(pki.NODE, "x1", sans=[sneaky])


def test_a_node_certificate_names_only_what_the_controller_saw() -> None:
    names = node_sans(
        "0123abcd0123abcd0123", ["127.0.0.1", "[::1]:5000", "10.1.2.3:7400"], "10.1.2.3"
    )
    assert names == ["0123abcd0123abcd0123", "127.0.0.1", "::1", "localhost", "10.1.2.3"]
    mapped = node_sans("n", [], "::ffff:10.1.2.3")
    assert mapped[-1] == "10.1.2.3"
    for claimed in ("10.9.9.9", "controller.example.com", "dockyard-controller"):
        with pytest.raises(ValidationError, match=r"hosts\[0\].*not the address this request"):
            node_sans("n", [claimed], "10.1.2.3")


_NAMES = st.one_of(
    st.sampled_from(
        [pki.role_host(r) for r in pki.ROLES]
        + ["DOCKYARD-CONTROLLER", "127.0.0.1", "::1", "localhost", "10.0.0.1", "[10.0.0.1]:7400"]
    ),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?", fullmatch=True),
    st.ip_addresses().map(str),
)


@settings(max_examples=150, deadline=None, database=None, print_blob=True)
@given(role=st.sampled_from(pki.ROLES), names=st.lists(_NAMES, max_size=6))
def test_no_certificate_carries_another_roles_name(role: str, names: list[str]) -> None:
    ca = _FUZZ_CA
    try:
        cert, _ = ca.issue_pair(role, "subject", sans=[n for n in names if "[" not in n])
    except pki.PKIError:
        assert any(
            n.lower() in {pki.role_host(r) for r in pki.ROLES} - {pki.role_host(role)}
            for n in names
        )
        return
    carried = {n.lower() for n in sans(cert)} & {pki.role_host(r) for r in pki.ROLES}
    assert carried == {pki.role_host(role)}


@settings(max_examples=150, deadline=None, database=None, print_blob=True)
@given(names=st.lists(_NAMES, max_size=6), observed=st.sampled_from(["10.0.0.1", "", "::1"]))
def test_a_node_certificate_never_names_a_host_it_did_not_come_from(
    names: list[str],
    observed: str,
) -> None:
    try:
        granted = node_sans("0123abcd0123abcd0123", names, observed)
    except ValidationError:
        return
    assert set(granted) <= {
        "0123abcd0123abcd0123",
        "127.0.0.1",
        "::1",
        "localhost",
        *([observed] if observed else []),
    }
    cert, _ = _FUZZ_CA.issue_pair(pki.NODE, "0123abcd0123abcd0123", sans=granted)
    assert pki.CONTROLLER_TLS_NAME not in sans(cert)


_FUZZ_CA = pki.CertificateAuthority.create()


# ----------------------------------------------------------------- end to end


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    yield cluster


def test_join_refuses_hosts_the_controller_cannot_vouch_for(
    cluster: Cluster, tmp_path: Path
) -> None:
    token = cluster.join_token()
    refused = cluster.run_tool(
        "dockyard-agent",
        "join",
        "--token",
        token,
        cluster.join_address,
        "--state-dir",
        str(tmp_path / "a"),
        "--api-host",
        "10.20.30.40",
        check=False,
    )
    assert refused.returncode == 1
    assert (
        "hosts[0]" in refused.stderr and "not the address this request came from" in refused.stderr
    ), refused.stderr
    assert not (tmp_path / "a" / "pki" / "node.pem").exists()
    cluster.run_tool(
        "dockyard-agent",
        "join",
        "--token",
        token,
        cluster.join_address,
        "--state-dir",
        str(tmp_path / "b"),
        "--api-host",
        "127.0.0.1",
    )
    cert = (tmp_path / "b" / "pki" / "node.pem").read_bytes()
    node_id = pki.identity_of(cert).id
    assert sans(cert) == {node_id, "dockyard-node", "127.0.0.1", "::1", "localhost"}


class ForgedControl(control_pb2_grpc.ControlServicer):
    def ListNodes(self, request: object, context: object) -> ListNodesResponse:
        return ListNodesResponse(nodes=[Node(id="f" * 20)])


class ForgedCA(ca_pb2_grpc.NodeCAServicer):
    def IssueNodeCertificate(self, request: object, context: object) -> NodeCertificate:
        return NodeCertificate(node_id="forged", role="node")


class ForgedDispatcher(dispatcher_pb2_grpc.DispatcherServicer):
    def Session(
        self, request_iterator: Iterator[object], context: object
    ) -> Iterator[DispatcherMessage]:
        next(request_iterator)
        yield DispatcherMessage(
            accepted=SessionAccepted(session_id="forged", heartbeat_period_seconds=1.0)
        )


@pytest.fixture
def impostor(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[str, NodePKI]]:
    """A server on loopback with a node's certificate of the cluster (named for
    127.0.0.1, the address dialled): what a compromised node serves."""
    cluster.join("rogue", tmp_path / "rogue")
    files = NodePKI.of(tmp_path / "rogue")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    control_pb2_grpc.add_ControlServicer_to_server(ForgedControl(), server)
    ca_pb2_grpc.add_NodeCAServicer_to_server(ForgedCA(), server)
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(ForgedDispatcher(), server)
    chain = files.cert.read_bytes() + files.ca.read_bytes()
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(
        address,
        grpc.ssl_server_credentials(
            [(files.key.read_bytes(), chain)], root_certificates=files.ca.read_bytes()
        ),
    )
    server.start()
    assert "127.0.0.1" in sans(files.cert.read_bytes())  # it would pass an address check
    try:
        yield address, files
    finally:
        server.stop(0)


def test_the_cli_refuses_a_node_certificate_where_a_controller_is_expected(
    cluster: Cluster,
    impostor: tuple[str, NodePKI],
) -> None:
    address, _ = impostor
    result = cluster.cli("node", "ls", check=False, host=address)
    assert result.returncode == 1, result.stdout
    assert "f" * 20 not in result.stdout
    assert "does not name a controller" in result.stderr, result.stderr
    token = cluster.run_tool(
        "dockyard-controller", "token", "ls", "-H", address, *cluster.tls_args(), check=False
    )
    assert token.returncode == 1 and "does not name a controller" in token.stderr
    assert cluster.cli_ok("node", "ls")  # the real controller passes


def test_a_join_refuses_a_node_certificate_on_the_join_port(
    cluster: Cluster,
    impostor: tuple[str, NodePKI],
) -> None:
    address, _ = impostor
    with pytest.raises(JoinError, match="not a controller's"):
        asyncio.run(request_certificate(address, cluster.join_token(), []))


def test_an_agent_session_refuses_a_node_certificate(
    cluster: Cluster,
    impostor: tuple[str, NodePKI],
    tmp_path: Path,
) -> None:
    address, _ = impostor
    cluster.join("victim", tmp_path / "victim")
    files = NodePKI.of(tmp_path / "victim")
    identity = NodeIdentity(files.identity().id, "victim")

    async def attempt(target: str) -> bool:
        session = ControllerSession(
            [target],
            identity,
            NodeDescription,
            backoff=Backoff(initial=0.05, maximum=0.1),
            credentials=files.channel_credentials,
        )
        running = asyncio.create_task(session.run())
        try:
            await asyncio.wait_for(session.connected.wait(), 4)
            return True
        except TimeoutError:
            return False
        finally:
            running.cancel()
            await asyncio.wait([running], timeout=5)  # bounded, whatever grpc does

    async def both() -> tuple[bool, bool]:  # one event loop: grpc.aio keeps to one
        return await attempt(address), await attempt(cluster.address)

    impostor_accepted, controller_accepted = asyncio.run(both())
    assert not impostor_accepted
    assert controller_accepted  # and the real controller is


def test_a_renewal_keeps_only_what_the_controller_saw(cluster: Cluster, tmp_path: Path) -> None:
    from dockyard.v1.ca_pb2 import RenewNodeCertificateRequest

    cluster.join("n", tmp_path / "n")
    files = NodePKI.of(tmp_path / "n")
    with grpc.secure_channel(
        cluster.address,
        files.channel_credentials(),
        [("grpc.ssl_target_name_override", pki.CONTROLLER_TLS_NAME)],
    ) as channel:
        stub = ca_pb2_grpc.NodeCAStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RenewNodeCertificate(
                RenewNodeCertificateRequest(
                    csr_pem=pki.make_csr(pki.new_key()), hosts=["10.0.0.1"]
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        renewed = stub.RenewNodeCertificate(
            RenewNodeCertificateRequest(csr_pem=pki.make_csr(pki.new_key())), timeout=10
        )
    assert pki.CONTROLLER_TLS_NAME not in sans(renewed.cert_pem)
    assert all(
        name in {files.identity().id, "dockyard-node", "127.0.0.1", "::1", "localhost"}
        for name in sans(renewed.cert_pem)
    )
    assert dt.timedelta(0) < pki.load_cert(renewed.cert_pem).not_valid_after_utc - dt.datetime.now(
        dt.UTC
    )


def test_an_agent_named_by_the_controller_must_hold_that_nodes_certificate(
    cluster: Cluster,
) -> None:
    """`service logs` dials the agent API address a node reported (its own claim): the
    certificate there must be that node's, by the ID the controller gave it."""
    from dockyard.cli.client import CliError, Target, TLSFiles, call
    from dockyard.v1 import agent_pb2_grpc
    from dockyard.v1.types_pb2 import GetVersionRequest

    for name in ("n1", "n2"):
        cluster.start_agent(name)
    cluster.wait_for(
        lambda: (
            {n["status"]["state"] for n in cluster.nodes().values()} == {"READY"}
            and len(cluster.nodes()) == 2
        ),
        "2 nodes READY",
    )
    ids = {name: node["id"] for name, node in cluster.nodes().items()}
    admin = cluster.pki / "admin"
    tls = TLSFiles(str(admin / "ca.pem"), str(admin / "cert.pem"), str(admin / "key.pem"))
    n1 = cluster.agent_address("n1")

    def version(server_name: str) -> object:
        return call(
            Target(n1, "test", tls, server_name=server_name),
            agent_pb2_grpc.AgentStub,
            "GetVersion",
            GetVersionRequest(),
            what="agent",
        )

    assert version(ids["n1"]) is not None
    with pytest.raises(CliError, match=rf"{n1} is not '{ids['n2']}': its certificate"):
        version(ids["n2"])  # n2 claiming n1's address is found out
