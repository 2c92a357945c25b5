"""Services on real runc: three agent processes, a real registry, a real controller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetServiceRequest,
    ListTasksRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec, Task, UpdateConfig, UpdateStatus
from tests.agent.conftest import ImageRegistry
from tests.conftest import Cluster
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.registry]
State = TaskStatus.State
NAMES = ("r1", "r2", "r3")


@pytest.fixture
def runc_cluster(
    cluster_factory: Callable[..., Cluster], image_registry: ImageRegistry
) -> Iterator[Cluster]:
    cluster = cluster_factory()
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
