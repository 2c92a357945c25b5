"""Services and jobs end to end: a real controller, real agent processes with the
hollow runtime (simulated containers), the real gRPC API."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetServiceRequest,
    ListTasksRequest,
    RemoveServiceRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec, Task
from tests.conftest import Cluster

State = TaskStatus.State


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller(["--node-down-grace", "2"])
    cluster.start_hollow_nodes()
    yield cluster


def spec(name: str, replicas: int = 3, command: tuple[str, ...] = ("sleep", "3600")) -> ServiceSpec:
    result = ServiceSpec(name=name)
    result.task.container.image = "busybox"
    result.task.container.command.extend(command)
    result.task.restart_policy.delay_seconds = 0.2
    result.replicated.replicas = replicas
    return result


def tasks(control: Any, service: str, history: bool = False) -> list[Task]:
    request = ListTasksRequest(services=[service], include_history=history)
    return list(control.ListTasks(request).tasks)


def running(control: Any, service: str) -> list[Task]:
    return [t for t in tasks(control, service) if t.status.state == State.RUNNING]


def node_names(cluster: Cluster) -> dict[str, str]:
    return {n["id"]: name for name, n in cluster.nodes().items()}


def test_replicas_converge_spread_and_scale(cluster: Cluster, control: Any) -> None:
    control.CreateService(CreateServiceRequest(spec=spec("web", 6)))
    cluster.wait_for(lambda: len(running(control, "web")) == 6, "6 tasks running")
    per_node = Counter(t.node_id for t in running(control, "web"))
    assert sorted(per_node.values()) == [2, 2, 2]
    on_n1 = json.loads(cluster.cli("node", "ps", "n1", "-o", "json").stdout)
    n1 = cluster.nodes()["n1"]["id"]
    assert len(on_n1) == 2 and {t["node_id"] for t in on_n1} == {n1}
    unknown = cluster.cli("node", "ps", "nope", check=False)
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    service = control.GetService(GetServiceRequest(service="web"))
    service.spec.replicated.replicas = 2
    control.UpdateService(
        UpdateServiceRequest(service="web", version=service.meta.version, spec=service.spec)
    )
    cluster.wait_for(
        lambda: len(tasks(control, "web")) == 2 and len(running(control, "web")) == 2,
        "scaled down to 2",
    )
    assert sorted(t.slot for t in tasks(control, "web")) == [1, 2]

    # scaling is not an update: the tasks that run keep running, no rolling restart
    kept = {t.id for t in running(control, "web")}
    history = len(tasks(control, "web", history=True))
    service = control.GetService(GetServiceRequest(service="web"))
    service.spec.replicated.replicas = 4
    scaled = control.UpdateService(
        UpdateServiceRequest(service="web", version=service.meta.version, spec=service.spec)
    )
    assert scaled.spec_version == service.spec_version
    cluster.wait_for(lambda: len(running(control, "web")) == 4, "scaled up to 4")
    time.sleep(1)  # long enough for an (unwanted) rolling update to have started
    assert kept <= {t.id for t in running(control, "web")}
    assert len(tasks(control, "web", history=True)) == history + 2


def test_a_killed_agents_tasks_come_back_elsewhere(cluster: Cluster, control: Any) -> None:
    control.CreateService(CreateServiceRequest(spec=spec("web", 3)))
    cluster.wait_for(lambda: len(running(control, "web")) == 3, "3 tasks running")
    names = node_names(cluster)
    victim = next(t for t in running(control, "web"))
    cluster.agents[names[victim.node_id]].kill()
    took = cluster.wait_for(
        lambda: (
            len(running(control, "web")) == 3
            and victim.node_id not in {t.node_id for t in running(control, "web")}
        ),
        "the lost task replaced on another node",
        30,
    )
    # DOWN after the heartbeat grace, replaced after --node-down-grace, plus start-up.
    assert took < cluster.grace + 2 + 5
    history = tasks(control, "web", history=True)
    orphaned = [t for t in history if t.id == victim.id]
    assert orphaned and orphaned[0].status.state == State.ORPHANED


def test_drain_moves_tasks_and_active_takes_new_ones(cluster: Cluster, control: Any) -> None:
    control.CreateService(CreateServiceRequest(spec=spec("web", 3)))
    cluster.wait_for(lambda: len(running(control, "web")) == 3, "3 tasks running")
    cluster.cli("node", "update", "--availability", "drain", "n1")
    n1 = cluster.nodes()["n1"]["id"]
    cluster.wait_for(
        lambda: (
            len(running(control, "web")) == 3
            and n1 not in {t.node_id for t in running(control, "web")}
        ),
        "tasks moved off the drained node",
    )
    # Active again: it takes new tasks (the scale-up's spread puts them on the empty node).
    cluster.cli("node", "update", "--availability", "active", "n1")
    service = control.GetService(GetServiceRequest(service="web"))
    service.spec.replicated.replicas = 6
    control.UpdateService(
        UpdateServiceRequest(service="web", version=service.meta.version, spec=service.spec)
    )
    cluster.wait_for(
        lambda: (
            len(running(control, "web")) == 6 and n1 in {t.node_id for t in running(control, "web")}
        ),
        "new tasks on the active node",
    )


def test_a_failing_task_is_restarted_by_policy(cluster: Cluster, control: Any) -> None:
    failing = spec("crash", 1, ("sh", "-c", "exit 3"))
    failing.task.restart_policy.max_attempts = 2
    control.CreateService(CreateServiceRequest(spec=failing))
    cluster.wait_for(
        lambda: (
            len(
                [t for t in tasks(control, "crash", history=True) if t.status.state == State.FAILED]
            )
            == 3
        ),
        "the first run and two restarts failed",
    )
    history = tasks(control, "crash", history=True)
    assert all(t.status.exit_code == 3 for t in history)
    assert "non-zero exit (3)" in history[0].status.error
    # ... and no third restart: the orchestrator gives up at max_attempts. Ten restart
    # delays and two heartbeats later there is still no new task.
    time.sleep(10 * failing.task.restart_policy.delay_seconds + 2 * cluster.heartbeat)
    later = tasks(control, "crash", history=True)
    assert sorted(t.id for t in later) == sorted(t.id for t in history), [
        (t.id, State.Name(t.status.state)) for t in later
    ]
    assert len(later) == 3 and all(t.status.state == State.FAILED for t in later)


def test_global_service_follows_a_new_node(cluster: Cluster, control: Any) -> None:
    agents = spec("agent-helper", 0)
    agents.ClearField("replicated")
    getattr(agents, "global").SetInParent()
    control.CreateService(CreateServiceRequest(spec=agents))
    cluster.wait_for(lambda: len(running(control, "agent-helper")) == 3, "one task per node")
    cluster.start_agent("n4")
    cluster.wait_for(lambda: len(running(control, "agent-helper")) == 4, "a task on the new node")


def test_a_job_runs_its_completions(cluster: Cluster, control: Any) -> None:
    job = spec("batch", 0, ("sleep", "0.2"))
    job.ClearField("replicated")
    job.job.completions = 5
    job.job.parallelism = 2
    control.CreateService(CreateServiceRequest(spec=job))
    cluster.wait_for(
        lambda: control.GetService(GetServiceRequest(service="batch")).job_status.complete,
        "the job to complete",
        30,
    )
    status = control.GetService(GetServiceRequest(service="batch")).job_status
    assert (status.succeeded, status.failed) == (5, 0)


def test_an_unplaceable_task_says_why(cluster: Cluster, control: Any) -> None:
    huge = spec("huge", 1)
    huge.task.resources.reservations.memory_bytes = 1 << 50
    control.CreateService(CreateServiceRequest(spec=huge))
    cluster.wait_for(
        lambda: "insufficient memory" in (tasks(control, "huge") or [Task()])[0].status.message,
        "the pending reason",
    )
    task = tasks(control, "huge")[0]
    assert task.status.state == State.PENDING
    assert "no suitable node: insufficient memory" in task.status.message
    assert "on 3 nodes" in task.status.message


def test_removing_a_service_stops_its_tasks(cluster: Cluster, control: Any) -> None:
    control.CreateService(CreateServiceRequest(spec=spec("web", 3)))
    cluster.wait_for(lambda: len(running(control, "web")) == 3, "3 tasks running")
    service_id = running(control, "web")[0].service_id
    control.RemoveService(RemoveServiceRequest(service="web"))
    with pytest.raises(grpc.RpcError) as error:
        control.GetService(GetServiceRequest(service="web"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    def of_service() -> list[Task]:  # the name no longer resolves: list all, by service id
        listed = control.ListTasks(ListTasksRequest(include_history=True)).tasks
        return [t for t in listed if t.service_id == service_id]

    # Each task is told to shut down, its agent stops it, then it is reaped: a task is
    # deleted only once it ended, so none left means every one really stopped.
    cluster.wait_for(
        lambda: all(t.desired_state == State.SHUTDOWN for t in of_service()),
        "every task told to shut down",
    )
    cluster.wait_for(lambda: not of_service(), "the removed service's tasks gone")


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (lambda s: setattr(s.replicated, "replicas", -1), "INVALID_ARGUMENT", "replicas"),
        (lambda s: setattr(s.replicated, "replicas", 10**9), "INVALID_ARGUMENT", "replicas"),
        (lambda s: setattr(s.task.container, "image", "Bad:Image"), "INVALID_ARGUMENT", "image"),
        (
            lambda s: s.task.placement.constraints.append("node.labels.zone=a"),
            "INVALID_ARGUMENT",
            "placement",
        ),
        (
            lambda s: s.task.placement.constraints.append("node.lables.zone==a"),
            "INVALID_ARGUMENT",
            "placement",
        ),
        (
            lambda s: setattr(s.task.restart_policy, "delay_seconds", -1),
            "INVALID_ARGUMENT",
            "delay_seconds",
        ),
        (
            lambda s: setattr(s.task.resources.reservations, "memory_bytes", -5),
            "INVALID_ARGUMENT",
            "memory_bytes",
        ),
        (lambda s: setattr(s, "name", "bad name"), "INVALID_ARGUMENT", "spec.name"),
        (lambda s: s.task.container.env.append("=x"), "INVALID_ARGUMENT", "env"),
        (
            lambda s: s.task.container.mounts.add(type="nfs", source="data", target="/d"),
            "INVALID_ARGUMENT",
            "spec.task.container.mounts[0].type",
        ),
        (
            lambda s: s.task.container.mounts.add(type="volume", source="../x", target="/d"),
            "INVALID_ARGUMENT",
            "spec.task.container.mounts[0].source",
        ),
        (
            lambda s: s.task.container.mounts.add(type="bind", source="rel", target="/d"),
            "INVALID_ARGUMENT",
            "spec.task.container.mounts[0].source",
        ),
        (
            lambda s: [s.task.container.mounts.add(type="tmpfs", target="/d") for _ in range(2)],
            "INVALID_ARGUMENT",
            "spec.task.container.mounts[1].target",
        ),
    ],
)
def test_bad_service_specs_are_refused_and_nothing_is_written(
    cluster: Cluster,
    control: Any,
    change: Callable[[ServiceSpec], None],
    code: str,
    field: str,
) -> None:
    bad = spec("bad", 1)
    change(bad)
    with pytest.raises(grpc.RpcError) as error:
        control.CreateService(CreateServiceRequest(spec=bad))
    assert error.value.code().name == code
    assert field in error.value.details()
    assert not control.ListTasks(ListTasksRequest()).tasks
    assert not _exists(control, "bad")


def test_duplicate_names_and_racing_updates(cluster: Cluster, control: Any) -> None:
    control.CreateService(CreateServiceRequest(spec=spec("web", 1)))
    with pytest.raises(grpc.RpcError) as error:
        control.CreateService(CreateServiceRequest(spec=spec("web", 1)))
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    read = control.GetService(GetServiceRequest(service="web"))
    first, second = ServiceSpec(), ServiceSpec()
    first.CopyFrom(read.spec)
    second.CopyFrom(read.spec)
    first.replicated.replicas = 2
    second.replicated.replicas = 4
    control.UpdateService(
        UpdateServiceRequest(service="web", version=read.meta.version, spec=first)
    )
    with pytest.raises(grpc.RpcError) as error:
        control.UpdateService(
            UpdateServiceRequest(service="web", version=read.meta.version, spec=second)
        )
    assert error.value.code() == grpc.StatusCode.ABORTED
    assert "read it again and retry" in error.value.details()
    assert control.GetService(GetServiceRequest(service="web")).spec.replicated.replicas == 2
    with pytest.raises(grpc.RpcError) as error:
        control.UpdateService(UpdateServiceRequest(service="nope", version=1, spec=first))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def _exists(control: Any, name: str) -> bool:
    try:
        control.GetService(GetServiceRequest(service=name))
    except grpc.RpcError:
        return False
    return True
