"""A secret cannot be removed while anything may still need it: a service's spec, its
previous spec (the rollback target) or a task that has not ended. Real controller and
hollow agents; the refusal names the user and writes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dockyard.controller.secrets import secret_users
from dockyard.v1.control_pb2 import (
    CreateSecretRequest,
    CreateServiceRequest,
    GetServiceRequest,
    ListSecretsRequest,
    ListTasksRequest,
    RemoveSecretRequest,
    RemoveServiceRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import (
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    Task,
    UpdateConfig,
)
from tests.conftest import Cluster

State = TaskStatus.State


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_hollow_nodes(("n1",))
    yield cluster


def spec_of(
    name: str, *, secret: str = "", replicas: int = 1, node: str = "n1", step: int = 0
) -> ServiceSpec:
    spec = ServiceSpec(name=name, labels={"step": str(step)})
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "3600"])
    if secret:
        spec.task.container.secrets.append(SecretReference(secret_name=secret))
    spec.task.placement.constraints.append(f"node.name=={node}")
    spec.replicated.replicas = replicas
    spec.update.order = UpdateConfig.START_FIRST
    return spec


def refused_removal(control: Any, name: str) -> str:
    """RemoveSecret's FAILED_PRECONDITION details; the secret must still be there."""
    with pytest.raises(grpc.RpcError) as raised:
        control.RemoveSecret(RemoveSecretRequest(secret=name))
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    names = [s.spec.name for s in control.ListSecrets(ListSecretsRequest()).secrets]
    assert name in names  # nothing written
    return str(error.details())


def update(control: Any, name: str, spec: ServiceSpec) -> None:
    """UpdateService, read again while the orchestrator writes the update's status."""
    for _ in range(20):
        service = control.GetService(GetServiceRequest(service=name))
        try:
            control.UpdateService(
                UpdateServiceRequest(service=name, version=service.meta.version, spec=spec)
            )
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"service {name} kept changing")


def test_a_previous_spec_keeps_its_secret(cluster: Cluster, control: Any) -> None:
    control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="old_key", data=b"k")))
    control.CreateService(CreateServiceRequest(spec=spec_of("web", secret="old_key", replicas=0)))
    update(control, "web", spec_of("web", replicas=0))  # the secret is only the rollback's now
    details = refused_removal(control, "old_key")
    assert "service web (its previous spec, the rollback target)" in details, details
    update(control, "web", spec_of("web", replicas=0, step=1))  # the rollback target moves on
    control.RemoveSecret(RemoveSecretRequest(secret="old_key"))


def test_a_task_that_still_runs_keeps_its_secret(cluster: Cluster, control: Any) -> None:
    control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="api_key", data=b"k")))
    control.CreateService(CreateServiceRequest(spec=spec_of("api", secret="api_key")))

    def tasks() -> list[Task]:
        return list(control.ListTasks(ListTasksRequest(services=["api"])).tasks)

    cluster.wait_for(lambda: any(t.status.state == State.RUNNING for t in tasks()), "a task")
    [old] = tasks()
    # Start-first updates whose tasks can never be placed: the old task keeps running,
    # and after the second one neither the spec nor the previous spec has the secret.
    update(control, "api", spec_of("api", node="nowhere"))
    update(control, "api", spec_of("api", node="nowhere", step=1))
    details = refused_removal(control, "api_key")
    assert f"task {old.id[:12]} of service api" in details, details
    assert "the rollback target" not in details, details
    # Once the service is gone and its tasks have stopped, the secret can go.
    control.RemoveService(RemoveServiceRequest(service="api"))

    def removed() -> bool:
        try:
            control.RemoveSecret(RemoveSecretRequest(secret="api_key"))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False
        return True

    cluster.wait_for(removed, "the secret removed once its tasks stopped", 30)


def _task(task_id: str, state: State.ValueType, secret_id: str) -> Task:
    task = Task(id=task_id, service_id="s1", service_name="web")
    task.status.state = state
    task.desired_state = State.SHUTDOWN
    task.spec.container.secrets.append(SecretReference(secret_id=secret_id))
    return task


def test_secret_users_names_spec_previous_spec_and_tasks_not_ended() -> None:
    service = Service(id="s1")
    service.spec.name = "web"
    assert secret_users("x", [service], []) == []
    # being stopped (desired SHUTDOWN) but still running: its node has the file
    running = _task("a" * 20, State.RUNNING, "x")
    assert secret_users("x", [service], [running]) == [f"task {'a' * 12} of service web"]
    assert secret_users("x", [service], [_task("b" * 20, State.SHUTDOWN, "x")]) == []
    service.previous_spec.task.container.secrets.append(SecretReference(secret_id="x"))
    assert secret_users("x", [service], [running]) == [
        f"service web (its previous spec, the rollback target) and its task {'a' * 12} "
        "of service web"
    ]
    many = [_task(f"{i:020d}", State.STARTING, "x") for i in range(7)]
    assert secret_users("x", [], many)[0].endswith("and 2 more of service web")
