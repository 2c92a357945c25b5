"""Fuzzing what nodes speak to a controller: `NodeCA.IssueNodeCertificate` on the join
port (TLS, no client certificate: the one unauthenticated RPC), `NodeCA.RenewNodeCertificate`
and the `Dispatcher.Session` stream with a node's certificate.

Every answer must be deliberate (never UNKNOWN or INTERNAL), the controller must stay up,
a refused request writes nothing to etcd, and a node can never make or change another
node's record or any task.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import strategies as st

from dockyard.common import pki
from dockyard.controller.server import MAX_MESSAGE_BYTES
from dockyard.v1 import ca_pb2_grpc, dispatcher_pb2_grpc
from dockyard.v1.ca_pb2 import IssueNodeCertificateRequest, RenewNodeCertificateRequest
from dockyard.v1.dispatcher_pb2 import AgentMessage
from tests.conftest import Cluster
from tests.security.fuzzlib import (
    MessageStrategies,
    check_answer,
    etcd_snapshot,
    run_examples,
    settle,
)

PREFIX = "/dockyard/"
# Written by the controller's loops, or by an accepted session (its own node record).
BACKGROUND = (
    "/dockyard/leader/",
    "/dockyard/controllers/",
    "/dockyard/nodes/",
    "/dockyard/names/nodes/",
)
SESSION_SECONDS = 1.5


@dataclass
class NodeSide:
    cluster: Cluster
    etcd: str
    token: str
    node_id: str
    node_creds: grpc.ChannelCredentials

    def snapshot(self) -> dict[str, int]:
        return etcd_snapshot(self.etcd, PREFIX, BACKGROUND, self.cluster.etcd_tls)

    def alive(self) -> None:
        process = self.cluster.controller.process if self.cluster.controller else None
        assert process is not None and process.poll() is None, "the controller died"


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSide]:
    root: Path = tmp_path_factory.mktemp("fuzz-nodes")
    cluster = Cluster(root)
    try:
        cluster.start_controller()
        from dockyard.v1.control_pb2 import GetInfoRequest

        control = cluster.control()
        etcd = control.GetInfo(GetInfoRequest(), timeout=10).etcd_endpoints[0]
        control.close()
        state = root / "node"
        cluster.join("fuzz-node", state)
        directory = state / "pki"
        cert = (directory / "node.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(
            (directory / "ca.pem").read_bytes(), (directory / "node-key.pem").read_bytes(), cert
        )
        yield NodeSide(cluster, etcd, cluster.join_token(), pki.identity_of(cert).id, creds)
    finally:
        cluster.stop()


def _valid_csr() -> bytes:
    return pki.make_csr(pki.new_key())


def _strategies(side: NodeSide) -> MessageStrategies:
    return MessageStrategies(
        hints={
            "token": [side.token, side.token[:-1] + "0", "DYTKN-1-" + "0" * 64 + "-x"],
            "node_id": [side.node_id, "f0zz0000000000000000000000000001"],
            "task_id": ["t" * 24],
        },
        fields={"csr_pem": st.one_of(st.binary(max_size=300), st.builds(_valid_csr))},
    )


def _call(stub_method: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        stub_method(request, timeout=20)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _check_unary(
    side: NodeSide, method: str, stub_method: Any, request: Any, rate_limited: str = ""
) -> None:
    """`rate_limited`: the words of a deliberate RESOURCE_EXHAUSTED (a rate limit)."""
    before = side.snapshot()
    code, details = _call(stub_method, request)
    side.alive()
    if not (
        rate_limited and code == grpc.StatusCode.RESOURCE_EXHAUSTED and rate_limited in details
    ):
        check_answer(
            method,
            request,
            code,
            details,
            MAX_MESSAGE_BYTES,
            allowed=frozenset({*_ALLOWED, grpc.StatusCode.UNAUTHENTICATED}),
        )
    if code != grpc.StatusCode.OK:
        after = settle(side.snapshot, 1.0, 0.1)
        assert after == before, f"{method} refused ({code.name}) but changed etcd"


_ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


def test_fuzzed_joins_get_a_deliberate_answer(side: NodeSide) -> None:
    strategies = _strategies(side)
    with grpc.secure_channel(
        side.cluster.join_address,
        grpc.ssl_channel_credentials((side.cluster.pki / "ca.pem").read_bytes()),
    ) as channel:
        stub = ca_pb2_grpc.NodeCAStub(channel)
        run_examples(
            60,
            functools.partial(
                _check_unary, side, "IssueNodeCertificate", stub.IssueNodeCertificate
            ),
            request=strategies.message_of(IssueNodeCertificateRequest.DESCRIPTOR),
        )


def test_fuzzed_renewals_get_a_deliberate_answer(side: NodeSide) -> None:
    strategies = _strategies(side)
    with grpc.secure_channel(side.cluster.address, side.node_creds) as channel:
        stub = ca_pb2_grpc.NodeCAStub(channel)
        # One node renewing in a loop is rate-limited (its valid requests after three).
        run_examples(
            40,
            functools.partial(
                _check_unary,
                side,
                "RenewNodeCertificate",
                stub.RenewNodeCertificate,
                rate_limited="renews too often",
            ),
            request=strategies.message_of(RenewNodeCertificateRequest.DESCRIPTOR),
        )


def _session(side: NodeSide, messages: list[AgentMessage]) -> grpc.StatusCode:
    """Send the messages on one session, read what comes back for a while, hang up."""
    outgoing: queue.Queue[AgentMessage | None] = queue.Queue()
    for message in messages:
        outgoing.put(message)
    done = threading.Event()

    def requests() -> Iterator[AgentMessage]:
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    with grpc.secure_channel(side.cluster.address, side.node_creds) as channel:
        call = dispatcher_pb2_grpc.DispatcherStub(channel).Session(requests(), timeout=20)
        timer = threading.Timer(
            SESSION_SECONDS, lambda: (done.set(), outgoing.put(None), call.cancel())
        )
        timer.start()
        try:
            for _ in call:
                pass
            code = call.code()
        except grpc.RpcError as exc:
            code = exc.code()
        finally:
            timer.cancel()
            outgoing.put(None)
    return grpc.StatusCode.OK if code == grpc.StatusCode.CANCELLED and done.is_set() else code


def test_fuzzed_sessions_never_touch_other_nodes_or_tasks(side: NodeSide) -> None:
    strategies = _strategies(side)
    before = etcd_snapshot(side.etcd, PREFIX, ("/dockyard/leader/",), side.cluster.etcd_tls)

    def check(messages: list[AgentMessage]) -> None:
        code = _session(side, messages)
        side.alive()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own size limit, and only then
            assert max(m.ByteSize() for m in messages) > MAX_MESSAGE_BYTES
            return
        # ABORTED: the previous example's session may still count as live for the grace
        assert code in {*_ALLOWED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ABORTED}, (
            f"Session ended {code.name}"
        )

    run_examples(
        30,
        check,
        messages=st.lists(strategies.message_of(AgentMessage.DESCRIPTOR), min_size=1, max_size=6),
    )
    after = etcd_snapshot(side.etcd, PREFIX, ("/dockyard/leader/",), side.cluster.etcd_tls)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # only this node's own record (and its name) may have been written by a session
    assert all(
        side.node_id in key or key.startswith("/dockyard/names/nodes/") for key in changed
    ), changed
    assert not any(key.startswith("/dockyard/tasks/") for key in after)


def test_a_bad_join_request_costs_the_token_nothing(side: NodeSide, tmp_path: Path) -> None:
    """Found by the fuzzer: the token's use was counted before the CSR was checked."""
    cluster = side.cluster
    once = cluster.run_tool(
        "dockyard-controller",
        "token",
        "create",
        "--role",
        "agent",
        "--max-uses",
        "1",
        "-H",
        cluster.address,
        *cluster.tls_args(),
    ).stdout.strip()
    with grpc.secure_channel(
        cluster.join_address, grpc.ssl_channel_credentials((cluster.pki / "ca.pem").read_bytes())
    ) as channel:
        stub = ca_pb2_grpc.NodeCAStub(channel)
        for request, field in (
            (IssueNodeCertificateRequest(token=once, csr_pem=b"junk"), "csr_pem: "),
            (
                IssueNodeCertificateRequest(token=once, csr_pem=_valid_csr(), hosts=["bad host"]),
                "hosts[0]: ",
            ),
        ):
            code, details = _call(stub.IssueNodeCertificate, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field)
    assert cluster.join("after-bad", tmp_path / "n", token=once).returncode == 0


def test_a_huge_node_id_in_a_hello_is_refused_naming_the_field(side: NodeSide) -> None:
    """Found by the fuzzer: the refusal echoed the ID past gRPC's metadata limit."""
    from dockyard.v1.dispatcher_pb2 import SessionHello

    hello = AgentMessage(hello=SessionHello(node_id="é" * 40_000, name="x"))
    with grpc.secure_channel(side.cluster.address, side.node_creds) as channel:
        call = dispatcher_pb2_grpc.DispatcherStub(channel).Session(iter([hello]), timeout=20)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("hello.node_id: ")
