"""Standalone containers on attachable networks, the controller's side: a real controller
(etcd, TLS) and hollow nodes; the agent's calls (``Dispatcher.AttachNetwork``,
``DetachNetwork``, ``PruneAttachments``) made as the admin would.

A network that is not ``--attachable`` is refused with Docker's words; an attachment
gets an address from the top down that no VIP or task takes; ``network rm`` is refused
while one exists; detaching (or pruning after a restart) releases the address.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dockyard.v1 import dispatcher_pb2_grpc
from dockyard.v1.dispatcher_pb2 import (
    AttachNetworkRequest,
    DetachNetworkRequest,
    PruneAttachmentsRequest,
)
from tests.conftest import Cluster

C1, C2, C3 = ("1" * 64), ("2" * 64), ("3" * 64)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("attachable") / "cluster")
    cluster.root.mkdir(parents=True)
    try:
        cluster.start_controller()
        cluster.start_hollow_nodes(("n1", "n2"))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def dispatcher(cluster: Cluster) -> Iterator[Any]:
    channel = grpc.secure_channel(cluster.address, cluster.admin_credentials())
    try:
        yield dispatcher_pb2_grpc.DispatcherStub(channel)
    finally:
        channel.close()


def node_id(cluster: Cluster, name: str) -> str:
    return str(cluster.nodes()[name]["id"])


def test_a_network_not_attachable_is_refused_naming_it(cluster: Cluster, dispatcher: Any) -> None:
    cluster.cli("network", "create", "--subnet", "10.140.0.0/28", "plain")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            dispatcher.AttachNetwork(
                AttachNetworkRequest(
                    node_id=node_id(cluster, "n1"), network="plain", container_id=C1
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == "network plain not manually attachable"
        with pytest.raises(grpc.RpcError) as missing:
            dispatcher.AttachNetwork(
                AttachNetworkRequest(
                    node_id=node_id(cluster, "n1"), network="nope", container_id=C1
                )
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        cluster.cli("network", "rm", "plain")


def test_attachments_hold_addresses_and_the_network(cluster: Cluster, dispatcher: Any) -> None:
    cluster.cli("network", "create", "--attachable", "--subnet", "10.141.0.0/28", "shared")
    n1, n2 = node_id(cluster, "n1"), node_id(cluster, "n2")

    def attach(node: str, container: str, name: str) -> Any:
        return dispatcher.AttachNetwork(
            AttachNetworkRequest(
                node_id=node, network="shared", container_id=container, container_name=name
            )
        )

    try:
        first = attach(n1, C1, "probe1")
        assert first.network.spec.name == "shared" and first.address == "10.141.0.14"
        assert attach(n1, C1, "probe1").address == first.address  # asked again: the same
        second = attach(n2, C2, "probe2")
        assert second.address == "10.141.0.13"
        cluster.cli(
            "service", "create", "-d", "--name", "svc", "--replicas", "2",
            "--network", "shared", "busybox", "sleep", "3600",
        )  # fmt: skip
        spec = json.loads(cluster.cli("service", "inspect", "svc").stdout)[0]["spec"]
        vip = spec["task"]["networks"][0]["vip"]
        assert vip not in (first.address, second.address)
        assert ipaddress.ip_address(vip) in ipaddress.ip_network("10.141.0.0/28")

        refused = cluster.cli("network", "rm", "shared", check=False)
        assert refused.returncode != 0
        assert "container probe1" in refused.stderr and "container probe2" in refused.stderr
        cluster.cli("service", "rm", "svc")

        released = dispatcher.DetachNetwork(DetachNetworkRequest(node_id=n1, container_id=C1))
        assert released.detached == 1
        again = dispatcher.DetachNetwork(DetachNetworkRequest(node_id=n1, container_id=C1))
        assert again.detached == 0
        # n2 restarted with only C3 left: C2's attachment goes
        pruned = dispatcher.PruneAttachments(
            PruneAttachmentsRequest(node_id=n2, container_ids=[C3])
        )
        assert pruned.detached == 1
        assert attach(n1, C3, "probe3").address == "10.141.0.14"  # released: taken again
        dispatcher.DetachNetwork(DetachNetworkRequest(node_id=n1, container_id=C3))
    finally:
        cluster.cli("service", "rm", "svc", check=False)
        for container, node in ((C1, n1), (C2, n2), (C3, n1)):
            dispatcher.DetachNetwork(DetachNetworkRequest(node_id=node, container_id=container))
    cluster.wait_for(
        lambda: cluster.cli_ok("network", "rm", "shared"), timeout=30, what="shared removable"
    )
