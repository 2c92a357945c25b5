"""A service's `--with-registry-auth` credentials in the controller: checked, kept in
etcd apart from the service record, never returned, replaced by an update, removed
with the service. (The pull with them on runc nodes: tests/agent/test_registry_auth.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetInfoRequest,
    GetServiceRequest,
    ListServicesRequest,
    RemoveServiceRequest,
    UpdateServiceRequest,
)
from dockyard.v1.workloads_pb2 import RegistryAuth, ServiceSpec
from tests.conftest import Cluster
from tests.security.fuzzlib import etcd_snapshot

PASSWORD = "pa55-never-returned"


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    yield cluster


def auth_keys(control: Any, cluster: Cluster) -> dict[str, int]:
    endpoint = control.GetInfo(GetInfoRequest()).etcd_endpoints[0]
    return {
        k: v
        for k, v in etcd_snapshot(endpoint, "/dockyard/", tls=cluster.etcd_tls).items()
        if "/registryauth/" in k
    }


def spec(name: str) -> ServiceSpec:
    result = ServiceSpec(name=name)
    result.task.container.image = "registry.example:5000/team/app:1"
    result.replicated.replicas = 1
    return result


def test_registry_auth_is_kept_apart_and_never_returned(cluster: Cluster, control: Any) -> None:
    auth = RegistryAuth(registry="registry.example:5000", username="me", password=PASSWORD)
    with pytest.raises(grpc.RpcError) as raised:
        control.CreateService(
            CreateServiceRequest(
                spec=spec("bad"), registry_auth=RegistryAuth(registry="registry.example:5000")
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "registry_auth.password" in (raised.value.details() or "")
    assert auth_keys(control, cluster) == {}

    created = control.CreateService(CreateServiceRequest(spec=spec("app"), registry_auth=auth))
    assert created.registry_auth == "registry.example:5000"
    [key] = auth_keys(control, cluster)
    assert key.endswith(f"/registryauth/{created.id}")
    got = control.GetService(GetServiceRequest(service="app"))
    listed = control.ListServices(ListServicesRequest())
    assert PASSWORD not in str(got) and PASSWORD not in str(listed)
    assert got.registry_auth == "registry.example:5000"

    before = auth_keys(control, cluster)[key]
    newer = RegistryAuth(registry="registry.example:5000", username="me", password="rotated")
    updated = control.UpdateService(
        UpdateServiceRequest(
            service="app", version=got.meta.version, spec=got.spec, registry_auth=newer
        )
    )
    assert updated.meta.version > got.meta.version
    assert updated.spec_version == got.spec_version  # the same spec: no rolling update
    assert not updated.HasField("previous_spec")  # and no rollback target made of it
    assert auth_keys(control, cluster)[key] > before

    control.RemoveService(RemoveServiceRequest(service="app"))
    assert auth_keys(control, cluster) == {}
