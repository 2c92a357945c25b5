"""Certificate renewal is rate-limited per identity: a node renewing in a loop (each
renewal writes an issued-certificate record to etcd) is refused with a clear answer,
while the renewals an agent makes (once per two thirds of a certificate's life) pass."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from dockyard.common import pki
from dockyard.controller.ratelimit import RateLimiter, renewal_limiter
from dockyard.v1 import ca_pb2_grpc
from dockyard.v1.ca_pb2 import RenewNodeCertificateRequest
from tests.conftest import Cluster


def test_a_node_renewing_in_a_loop_is_refused(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    state = cluster.root / "looper"
    cluster.join("looper", state)
    files = state / "pki"
    node_id = pki.identity_of((files / "node.pem").read_bytes()).id
    creds = grpc.ssl_channel_credentials(
        (files / "ca.pem").read_bytes(),
        (files / "node-key.pem").read_bytes(),
        (files / "node.pem").read_bytes(),
    )
    codes = []
    details = ""
    with grpc.secure_channel(cluster.address, creds) as channel:
        stub = ca_pb2_grpc.NodeCAStub(channel)
        for _ in range(5):  # refused requests spend nothing of the node's allowance
            with pytest.raises(grpc.RpcError) as refused:
                stub.RenewNodeCertificate(RenewNodeCertificateRequest(csr_pem=b"junk"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(6):
            try:
                issued = stub.RenewNodeCertificate(
                    RenewNodeCertificateRequest(csr_pem=pki.make_csr(pki.new_key())), timeout=10
                )
                assert pki.identity_of(issued.cert_pem).id == node_id
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                details = exc.details() or ""
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert f"node {node_id} renews too often: at most 3 renewals at once" in details


def test_the_bucket_refills_one_call_per_interval() -> None:
    now = [100.0]
    limiter = RateLimiter(burst=2, interval=10.0, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0  # another identity has its own bucket
    now[0] += 4.0
    assert limiter.take("a") == pytest.approx(6.0)  # a refused call costs nothing
    now[0] += 6.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0.0


def test_idle_identities_are_forgotten_past_the_key_bound() -> None:
    now = [0.0]
    limiter = RateLimiter(burst=1, interval=1.0, max_keys=100, clock=lambda: now[0])
    for index in range(100):
        limiter.take(f"n{index}")
    now[0] += 5.0  # every bucket is full again: nothing to remember
    limiter.take("new")
    assert len(limiter) == 1


def test_renewals_follow_the_certificate_lifetime() -> None:
    assert renewal_limiter(90 * 86400).interval == 60.0
    assert renewal_limiter(12).interval == pytest.approx(1.2)  # two thirds of 12 s: 8 s
