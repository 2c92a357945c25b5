"""Configs through the controller (etcd) with hollow agents: the API shows the data,
service specs refer to them by name, removal waits for the users; the runc delivery
(read-only files in the container) is in tests/agent/test_agent_stack.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateConfigRequest,
    CreateServiceRequest,
    GetConfigRequest,
    GetServiceRequest,
    ListConfigsRequest,
    RemoveConfigRequest,
    RemoveServiceRequest,
)
from dockyard.v1.workloads_pb2 import ConfigReference, ConfigSpec, ServiceSpec
from tests.conftest import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("configs") / "cluster"
    root.mkdir()
    cluster = Cluster(root)
    try:
        cluster.start_controller(["--node-down-grace", "2"])
        cluster.start_hollow_nodes(("n1",))
        yield cluster
    finally:
        cluster.stop()
        cluster.cleanup_networks()


@pytest.fixture
def control(cluster: Cluster) -> Iterator[Any]:
    stub = cluster.control()
    yield stub
    stub.close()


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details() or ""


def spec_with(*refs: ConfigReference) -> ServiceSpec:
    spec = ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "3600"])
    spec.task.container.configs.extend(refs)
    spec.replicated.replicas = 1
    return spec


def test_configs_show_their_data_and_serve_services(
    cluster: Cluster, control: Any, tmp_path: Path
) -> None:
    source = tmp_path / "nginx.conf"
    source.write_text("worker_processes 2;\n")
    config_id = cluster.cli("config", "create", "--label", "app=web", "nginx", str(source))
    assert len(config_id.stdout.strip()) == 24
    got = control.GetConfig(GetConfigRequest(config="nginx"))
    assert got.spec.data == b"worker_processes 2;\n" and got.spec.labels["app"] == "web"
    assert [c.spec.data for c in control.ListConfigs(ListConfigsRequest()).configs] == [b""]
    shown = json.loads(cluster.cli("config", "inspect", "nginx").stdout)[0]
    assert shown["spec"]["data"] == "d29ya2VyX3Byb2Nlc3NlcyAyOwo="  # base64, as docker
    again = cluster.cli("config", "create", "nginx", str(source), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr

    for bad, field in [
        (ConfigReference(config_name="nginx", target="etc/x"), "target"),
        (ConfigReference(config_name="nginx", target="/etc/../x"), "target"),
        (ConfigReference(config_name="nginx", mode=0o1777), "mode"),
        (ConfigReference(), "config_name"),
    ]:
        code, details = code_of(
            lambda bad=bad: control.CreateService(CreateServiceRequest(spec=spec_with(bad)))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"spec.task.container.configs[0].{field}: "), details
    code, details = code_of(
        lambda: control.CreateService(
            CreateServiceRequest(spec=spec_with(ConfigReference(config_name="nope")))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "config 'nope' not found" in details

    cluster.cli("service", "create", "--name", "web", "--config", "nginx", "busybox", "sleep", "1h")
    [ref] = control.GetService(GetServiceRequest(service="web")).spec.task.container.configs
    assert (ref.config_id, ref.target, ref.mode) == (got.id, "/nginx", 0o444)
    code, details = code_of(lambda: control.RemoveConfig(RemoveConfigRequest(config="nginx")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "service web" in details
    assert "--config-rm" in details

    control.RemoveService(RemoveServiceRequest(service="web"))
    cluster.wait_for(lambda: cluster.cli_ok("config", "rm", "nginx"), "removable once unused", 30)
    assert not control.ListConfigs(ListConfigsRequest()).configs


def test_bad_configs_are_refused_naming_the_field(control: Any) -> None:
    for spec, field in [
        (ConfigSpec(name="empty", data=b""), "spec.data"),
        (ConfigSpec(name="big", data=b"x" * (500 * 1024 + 1)), "spec.data"),
        (ConfigSpec(name="bad name", data=b"x"), "spec.name"),
    ]:
        code, details = code_of(
            lambda spec=spec: control.CreateConfig(CreateConfigRequest(spec=spec))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
