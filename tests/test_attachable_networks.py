"""Standalone containers on attachable networks, the controller's side: a real controller
(etcd, TLS) and hollow nodes; the agent's calls (``Dispatcher.AttachNetwork``,
``DetachNetwork``, ``PruneAttachments``) made as the admin would.

A network that is not ``--attachable`` is refused with Docker's words; an attachment
gets an address from the top down that no VIP or task takes; ``network rm`` is refused
while one exists; detaching (or pruning after a restart) releases the address. A release the leader
could not be asked for is recorded and asked again until made (``DetachQueue``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.agent.network.attacher import NetworkAttacher
from dockyard.agent.network.detach_queue import DetachQueue
from dockyard.common.backoff import Backoff
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
        shown = json.loads(cluster.cli("network", "inspect", "shared").stdout)[0]
        assert [
            (c["name"], c["node"], c["node_id"], c["address"], c["container_id"])
            for c in shown["containers"]
        ] == [("probe1", "n1", n1, "10.141.0.14", C1), ("probe2", "n2", n2, "10.141.0.13", C2)]
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


def closed_port_address() -> str:
    """An address no one listens on (the leader unreachable)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


class Leader:
    """Where the agent's calls go: nowhere at first, then the controller, in a new
    session (as after reconnecting to a new leader)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.address = closed_port_address()
        self.session_id = "s1"
        self.connected = asyncio.Event()
        self.connected.set()

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self.cluster.admin_credentials())

    def reached(self) -> None:
        self.address, self.session_id = self.cluster.address, "s2"


async def until_released(queue: DetachQueue) -> None:
    for _ in range(600):
        if not queue.pending():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still pending after a minute: {queue.pending()}")


def test_a_release_the_leader_missed_is_made_once_it_answers(
    cluster: Cluster, dispatcher: Any, tmp_path: Path
) -> None:
    cluster.cli("network", "create", "--attachable", "--subnet", "10.142.0.0/28", "later")
    n1 = node_id(cluster, "n1")
    for container in (C1, C2):
        dispatcher.AttachNetwork(
            AttachNetworkRequest(node_id=n1, network="later", container_id=container)
        )
    record = tmp_path / "pending-detaches.json"

    async def scenario() -> None:
        leader = Leader(cluster)
        backoff = Backoff(initial=0.2, maximum=0.5)
        queue = DetachQueue(
            NetworkAttacher(n1, leader.channel), record, leader.connected,
            session_id=lambda: leader.session_id, backoff=backoff,
        )  # fmt: skip
        await queue.load()
        assert not await queue.release(C1)  # the leader unreachable: recorded
        assert json.loads(record.read_text()) == {"containers": [C1]}
        reloaded = DetachQueue(NetworkAttacher(n1, leader.channel), record, leader.connected)
        await reloaded.load()
        assert reloaded.pending() == [C1]  # an agent restart would take it up

        retrying = asyncio.create_task(queue.run())
        try:
            await asyncio.sleep(1.5)  # rounds that fail
            assert queue.pending() == [C1]
            leader.reached()
            await until_released(queue)  # no restart
        finally:
            retrying.cancel()
        assert json.loads(record.read_text()) == {"containers": []}

        # a long backoff is cut short by a new session (a new leader)
        leader = Leader(cluster)
        slow = DetachQueue(
            NetworkAttacher(n1, leader.channel), record, leader.connected,
            session_id=lambda: leader.session_id, backoff=Backoff(initial=3600, maximum=3600),
        )  # fmt: skip
        assert not await slow.release(C2)
        retrying = asyncio.create_task(slow.run())
        try:
            await asyncio.sleep(1.0)  # its first round failed: an hour's pause
            assert slow.pending() == [C2]
            leader.reached()
            await until_released(slow)
        finally:
            retrying.cancel()

    try:
        asyncio.run(scenario())
        for container in (C1, C2):  # already released
            again = dispatcher.DetachNetwork(
                DetachNetworkRequest(node_id=n1, container_id=container)
            )
            assert again.detached == 0
    finally:
        for container in (C1, C2):
            dispatcher.DetachNetwork(DetachNetworkRequest(node_id=n1, container_id=container))
        cluster.cli("network", "rm", "later", check=False)
