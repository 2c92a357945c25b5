"""A service's published port on a real runc agent: swarm's `mode=host` publishing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from dockyard.v1.control_pb2 import ListTasksRequest
from dockyard.v1.types_pb2 import TaskStatus
from tests.agent.conftest import ImageRegistry
from tests.conftest import Cluster
from tests.network.conftest import free_subnet, wait_http, web_command
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything, cleanup_network

pytestmark = [pytest.mark.runc, pytest.mark.registry]


@pytest.fixture
def bridge_cluster(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry
) -> Iterator[tuple[Cluster, str]]:
    cluster = cluster_factory(resolve_image="always")
    bridge, subnet = f"dyt{uuid.uuid4().hex[:8]}", free_subnet()
    cgroup = f"dockyard-test-{uuid.uuid4().hex[:8]}"
    try:
        cluster.start_controller()
        cluster.start_agent(
            "n1",
            runtime="runc",
            extra=["--cgroup-parent", cgroup, "--bridge", bridge, "--bridge-subnet", subnet],
        )
        cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "the node READY")
        yield cluster, subnet
    finally:
        cluster.stop()
        cleanup_everything(cluster.root / "agent-n1" / "runtime", cgroup)
        cleanup_network(
            cluster.root / "agent-n1" / "network", bridge, [subnet.rsplit(".", 1)[0] + "."]
        )


def test_a_published_service_port_answers_on_the_node(
    bridge_cluster: tuple[Cluster, str], image_registry: ImageRegistry
) -> None:
    cluster, subnet = bridge_cluster
    port = free_port()
    cluster.cli(
        "service",
        "create",
        "-d",
        "--name",
        "hello",
        "--publish",
        f"published={port},target=8080,mode=host",
        image_registry.busybox,
        *web_command("hello-service", 8080),
    )
    control = cluster.control()
    try:

        def running() -> list[object]:
            tasks = control.ListTasks(ListTasksRequest(services=["hello"])).tasks
            return [t for t in tasks if t.status.state == TaskStatus.State.RUNNING]

        cluster.wait_for(lambda: len(running()) == 1, "the published task RUNNING", 60)
    finally:
        control.close()
    assert wait_http(f"http://127.0.0.1:{port}/") == "hello-service\n"
    agent = cluster.agent_address("n1")
    listed = cluster.cli("ps", host=agent).stdout
    assert f"0.0.0.0:{port}->8080/tcp" in listed and "hello.1." in listed
    assert (
        subnet.rsplit(".", 1)[0] + "."
        in cluster.cli("container", "inspect", listed.splitlines()[1].split()[0], host=agent).stdout
    )
