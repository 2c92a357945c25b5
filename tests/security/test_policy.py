"""The cluster's policy: privileged containers only when an admin allows them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetClusterRequest,
    GetServiceRequest,
    ListServicesRequest,
    UpdateClusterRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import ClusterSpec
from dockyard.v1.workloads_pb2 import ServiceSpec
from tests.conftest import Cluster


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    yield cluster


def privileged_spec(name: str) -> ServiceSpec:
    spec = ServiceSpec(name=name)
    spec.task.container.image = "busybox"
    spec.task.container.privileged = True
    spec.replicated.replicas = 1
    return spec


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def test_privileged_services_need_the_policy(cluster: Cluster, control: Any) -> None:
    denied = refusal(
        lambda: control.CreateService(CreateServiceRequest(spec=privileged_spec("root")))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.details().startswith("spec.task.container.privileged: ")
    assert "--allow-privileged" in denied.details()
    assert not control.ListServices(ListServicesRequest()).services  # nothing written

    assert "Allow privileged: no" in cluster.cli("cluster", "inspect").stdout
    cluster.cli("cluster", "update", "--allow-privileged", "true")
    assert "Allow privileged: yes" in cluster.cli("cluster", "inspect").stdout
    created = control.CreateService(CreateServiceRequest(spec=privileged_spec("root")))
    assert created.spec.task.container.privileged

    # turned off again: the running service stays, a new spec asking for it does not pass
    cluster.cli("cluster", "update", "--allow-privileged=false")
    service = control.GetService(GetServiceRequest(service="root"))
    scaled = ServiceSpec()
    scaled.CopyFrom(service.spec)
    scaled.replicated.replicas = 2
    denied = refusal(
        lambda: control.UpdateService(
            UpdateServiceRequest(service="root", version=service.meta.version, spec=scaled)
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    after = control.GetService(GetServiceRequest(service="root"))
    assert after.spec.replicated.replicas == 1 and after.meta.version == service.meta.version

    by_cli = cluster.cli(
        "service", "create", "-d", "--name", "root2", "--privileged", "busybox", check=False
    )
    assert by_cli.returncode == 1 and "does not allow privileged" in by_cli.stderr


def test_the_policy_is_for_admins_and_guards_against_lost_updates(
    cluster: Cluster, control: Any
) -> None:
    current = control.GetCluster(GetClusterRequest())
    assert current.id and current.meta.version > 0
    stale = refusal(
        lambda: control.UpdateCluster(
            UpdateClusterRequest(
                version=current.meta.version - 1, spec=ClusterSpec(allow_privileged=True)
            )
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    unread = refusal(
        lambda: control.UpdateCluster(UpdateClusterRequest(spec=ClusterSpec(allow_privileged=True)))
    )
    assert unread.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not control.GetCluster(GetClusterRequest()).spec.allow_privileged

    out = cluster.root / "viewer"
    cluster.run_tool(
        "dockyard-controller",
        "user",
        "create",
        "viewer",
        "--role",
        "read-only",
        "--state-dir",
        str(cluster.root / "controller"),
        "--out",
        str(out),
    )
    viewer = cluster.tls_args(out)
    shown = cluster.run_tool("dockyard", *viewer, "-H", cluster.address, "cluster", "inspect")
    assert current.id in shown.stdout
    denied = cluster.run_tool(
        "dockyard",
        *viewer,
        "-H",
        cluster.address,
        "cluster",
        "update",
        "--allow-privileged",
        "true",
        check=False,
    )
    assert denied.returncode == 1 and "may not call UpdateCluster" in denied.stderr
    assert not control.GetCluster(GetClusterRequest()).spec.allow_privileged
