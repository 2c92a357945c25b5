"""Services on real runc: three agent processes, a real registry, a real controller."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1 import containers_pb2_grpc
from dockyard.v1.containers_pb2 import ContainerRef
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetClusterRequest,
    GetServiceRequest,
    ListTasksRequest,
    UpdateClusterRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec, Task, UpdateConfig, UpdateStatus
from tests.agent.conftest import BUILD, ImageRegistry
from tests.conftest import Cluster
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.registry]
State = TaskStatus.State
NAMES = ("r1", "r2", "r3")


@pytest.fixture
def runc_cluster(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry
) -> Iterator[Cluster]:
    cluster = cluster_factory(resolve_image="always")
    try:
        cluster.start_controller(["--node-down-grace", "2"])
        for name in NAMES:
            cluster.start_agent(
                name,
                runtime="runc",
                extra=["--cgroup-parent", f"dockyard-test-{cluster.root.name}-{name}"],
            )
        cluster.wait_for(
            lambda: (
                len(cluster.nodes()) == 3
                and all(n["status"]["state"] == "READY" for n in cluster.nodes().values())
            ),
            "3 nodes READY",
        )
        yield cluster
    finally:
        cluster.stop()
        for name in NAMES:
            cleanup_everything(
                cluster.root / f"agent-{name}" / "runtime",
                f"dockyard-test-{cluster.root.name}-{name}",
            )


def running(control: Any, service: str) -> list[Task]:
    tasks = control.ListTasks(ListTasksRequest(services=[service])).tasks
    return [t for t in tasks if t.status.state == State.RUNNING]


def test_replicas_on_runc_survive_a_killed_agent_and_roll_back_a_bad_update(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    cluster = runc_cluster
    control = cluster.control()
    try:
        spec = ServiceSpec(name="web")
        spec.task.container.image = image_registry.busybox
        spec.task.container.command.extend(["sleep", "3600"])
        spec.task.container.stop_grace_seconds = 1
        spec.replicated.replicas = 6
        control.CreateService(CreateServiceRequest(spec=spec))
        cluster.wait_for(lambda: len(running(control, "web")) == 6, "6 runc tasks running", 60)
        first = running(control, "web")[0]
        assert len(first.status.container_id) == 64

        ids = {n["id"]: name for name, n in cluster.nodes().items()}
        victim = ids[first.node_id]
        cluster.agents[victim].kill()
        cluster.wait_for(
            lambda: (
                len(running(control, "web")) == 6
                and first.node_id not in {t.node_id for t in running(control, "web")}
            ),
            "the killed agent's tasks running elsewhere",
            40,
        )

        service = control.GetService(GetServiceRequest(service="web"))
        bad = ServiceSpec()
        bad.CopyFrom(service.spec)
        health = bad.task.container.healthcheck
        health.test.extend(["CMD-SHELL", "exit 1"])
        health.interval_seconds, health.timeout_seconds, health.retries = 0.5, 1, 1
        bad.update.failure_action = UpdateConfig.ROLLBACK
        bad.update.parallelism = 2
        bad.update.monitor_seconds = 3
        control.UpdateService(
            UpdateServiceRequest(service="web", version=service.meta.version, spec=bad)
        )

        def rolled_back() -> bool:
            status = control.GetService(GetServiceRequest(service="web")).update_status
            return status.state == UpdateStatus.ROLLBACK_COMPLETED

        cluster.wait_for(rolled_back, "the update to roll back by itself", 90)
        final = control.GetService(GetServiceRequest(service="web"))
        assert "unhealthy" in final.update_status.message
        assert not final.spec.task.container.healthcheck.test
        cluster.wait_for(lambda: len(running(control, "web")) == 6, "6 tasks after rollback", 60)
    finally:
        control.close()


def containers_of(cluster: Cluster, tasks: list[Task]) -> list[Any]:
    """The agents' own records of the tasks' containers (Containers.Inspect on each node)."""
    names = {n["id"]: name for name, n in cluster.nodes().items()}
    records = []
    for task in tasks:
        address = cluster.agent_address(names[task.node_id])
        with grpc.secure_channel(address, cluster.admin_credentials()) as channel:
            stub = containers_pb2_grpc.ContainersStub(channel)
            records.append(stub.Inspect(ContainerRef(container=task.status.container_id),
                                        timeout=10))
    return records


def test_replicas_run_the_pinned_digest_and_privileged_needs_the_policy(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    cluster = runc_cluster
    ref = f"{image_registry.server.host}/pin/runc:1"
    subprocess.run([*BUILD, "busybox", "--tag", ref, "--push"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    control = cluster.control()
    try:
        spec = ServiceSpec(name="pinned")
        spec.task.container.image = ref
        spec.task.container.command.extend(["sleep", "3600"])
        spec.task.container.stop_grace_seconds = 0
        spec.replicated.replicas = 2
        created = control.CreateService(CreateServiceRequest(spec=spec))
        pinned = created.spec.task.container.image.partition("@")[2]
        cluster.wait_for(lambda: len(running(control, "pinned")) == 2, "2 pinned tasks", 60)
        moved = subprocess.run([*BUILD, "busybox", "--tag", ref, "--push", "--compression",
                                "none"], check=True, capture_output=True, text=True,
                               timeout=120).stdout.strip()  # fmt: skip
        assert moved != pinned
        service = control.GetService(GetServiceRequest(service="pinned"))
        spec.CopyFrom(service.spec)
        spec.replicated.replicas = 4
        control.UpdateService(UpdateServiceRequest(service="pinned",
                                                   version=service.meta.version, spec=spec))
        cluster.wait_for(lambda: len(running(control, "pinned")) == 4, "4 pinned tasks", 60)
        records = containers_of(cluster, running(control, "pinned"))
        assert {r.image_digest for r in records} == {pinned}  # not the moved tag's
        assert all(not r.config.privileged for r in records)

        current = control.GetCluster(GetClusterRequest())
        current.spec.allow_privileged = True
        control.UpdateCluster(UpdateClusterRequest(version=current.meta.version,
                                                   spec=current.spec))
        root = ServiceSpec(name="root")
        root.CopyFrom(spec)
        root.name, root.replicated.replicas = "root", 1
        root.task.container.privileged = True
        control.CreateService(CreateServiceRequest(spec=root))
        cluster.wait_for(lambda: len(running(control, "root")) == 1, "a privileged task", 60)
        assert containers_of(cluster, running(control, "root"))[0].config.privileged
    finally:
        control.close()


def test_a_service_mounts_a_node_directory_and_a_tmpfs(
    runc_cluster: Cluster, image_registry: ImageRegistry, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    control = runc_cluster.control()
    try:
        spec = ServiceSpec(name="mounts")
        spec.task.container.image = image_registry.busybox
        spec.task.container.command.extend(
            ["sh", "-c", "grep ' /cache ' /proc/mounts | cut -d' ' -f3 > /data/$(hostname); "
                         "hostname > /vol/$(hostname); sleep 300"])  # fmt: skip
        spec.task.container.stop_grace_seconds = 0
        spec.task.container.mounts.add(type="bind", source=str(data), target="/data")
        spec.task.container.mounts.add(type="tmpfs", target="/cache", tmpfs_size_bytes=1 << 20)
        spec.task.container.mounts.add(type="volume", source="svcdata", target="/vol")
        spec.replicated.replicas = 2
        control.CreateService(CreateServiceRequest(spec=spec))
        runc_cluster.wait_for(lambda: len(list(data.iterdir())) == 2, "both tasks wrote", 60)
        assert {f.read_text().strip() for f in data.iterdir()} == {"tmpfs"}
        names = {n["id"]: name for name, n in runc_cluster.nodes().items()}
        for task in running(control, "mounts"):  # each node made the volume it lacked
            volumes = runc_cluster.cli("volume", "ls", "-o", "json",
                                       host=runc_cluster.agent_address(names[task.node_id])).stdout
            (volume,) = [v for v in json.loads(volumes) if v["name"] == "svcdata"]
            assert Path(volume["mountpoint"]).is_dir() and volume["used_by"]
    finally:
        control.close()
