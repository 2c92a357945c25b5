"""Secrets end to end: a real controller (etcd), hollow agent processes, the gRPC API
and the CLI. The runc delivery (files in the container) is in
tests/agent/test_agent_workloads.py."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateSecretRequest,
    CreateServiceRequest,
    GetInfoRequest,
    GetSecretRequest,
    GetServiceRequest,
    ListSecretsRequest,
    ListServicesRequest,
    ListTasksRequest,
    RemoveSecretRequest,
    RemoveServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import SecretReference, SecretSpec, ServiceSpec
from tests.conftest import BIN, Cluster
from tests.security.fuzzlib import etcd_snapshot

State = TaskStatus.State
DATA = b"s3cr3t-Pa55-\x00\xff-dockyard-secret-bytes"
PREFIX = "/dockyard/"


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller(["--node-down-grace", "2"])
    cluster.start_hollow_nodes()
    yield cluster


@pytest.fixture
def control(cluster: Cluster) -> Iterator[Any]:
    stub = cluster.control()
    yield stub
    stub.close()


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details() or ""


def snapshot(control: Any, cluster: Cluster) -> dict[str, int]:
    endpoint = control.GetInfo(GetInfoRequest()).etcd_endpoints[0]
    keys = etcd_snapshot(endpoint, PREFIX, tls=cluster.etcd_tls)
    # the controller's own loops (leases, node heartbeats) write in the background
    return {k: v for k, v in keys.items() if "/secret" in k or "/services" in k}


def service_spec(name: str, *secrets: SecretReference, node: str = "n1") -> ServiceSpec:
    spec = ServiceSpec(name=name)
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "3600"])
    spec.task.container.secrets.extend(secrets)
    spec.task.placement.constraints.append(f"node.name=={node}")
    spec.replicated.replicas = 1
    return spec


def test_create_list_inspect_remove_never_show_the_data(
    cluster: Cluster, control: Any, tmp_path: Path
) -> None:
    source = tmp_path / "db-password"
    source.write_bytes(DATA)
    created = cluster.cli("secret", "create", "--label", "team=db", "db_password", str(source))
    secret_id = created.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{24}", secret_id), created.stdout
    listed = cluster.cli("secret", "ls")
    assert "db_password" in listed.stdout and secret_id in listed.stdout
    inspected = cluster.cli("secret", "inspect", "db_password")
    record = json.loads(inspected.stdout)[0]
    assert record["spec"]["name"] == "db_password" and record["spec"]["labels"] == {"team": "db"}
    assert int(record["size_bytes"]) == len(DATA) and not record["spec"].get("data")
    got = control.GetSecret(GetSecretRequest(secret=secret_id[:8]))
    assert got.spec.name == "db_password" and not got.spec.data
    assert all(not s.spec.data for s in control.ListSecrets(ListSecretsRequest()).secrets)
    # immutable and unique: the same name again is refused
    again = cluster.cli("secret", "create", "db_password", str(source), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    # from standard input
    piped = subprocess.run(
        [
            str(BIN / "dockyard"),
            *cluster.tls_args(),
            "-H",
            cluster.address,
            "secret",
            "create",
            "piped",
            "-",
        ],
        input=b"x",
        capture_output=True,
        env=cluster.env(),
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    removed = cluster.cli("secret", "rm", "db_password", "piped")
    assert removed.stdout.split() == ["db_password", "piped"]
    assert not control.ListSecrets(ListSecretsRequest()).secrets
    missing = cluster.cli("secret", "rm", "db_password", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (SecretSpec(name="empty", data=b""), "spec.data"),
        (SecretSpec(name="big", data=b"x" * (500 * 1024 + 1)), "spec.data"),
        (SecretSpec(name="bad name", data=b"x"), "spec.name"),
        (SecretSpec(name="", data=b"x"), "spec.name"),
        (SecretSpec(name="nl\n", data=b"x"), "spec.name"),
        (SecretSpec(name="lbl", data=b"x", labels={"": "v"}), "spec.labels"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field_and_write_nothing(
    cluster: Cluster, control: Any, spec: SecretSpec, field: str
) -> None:
    before = snapshot(control, cluster)
    code, details = code_of(lambda: control.CreateSecret(CreateSecretRequest(spec=spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}: "), details
    assert snapshot(control, cluster) == before


def test_the_largest_secret_is_accepted(control: Any) -> None:
    data = b"y" * (500 * 1024)
    record = control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="max", data=data)))
    assert record.size_bytes == len(data) and not record.spec.data


def test_a_service_gets_its_secret_only_on_its_node_and_blocks_removal(
    cluster: Cluster, control: Any
) -> None:
    secret = control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="api_key", data=DATA)))
    other = control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="unused", data=b"o")))
    # an unknown secret: NOT_FOUND naming it, nothing written
    before = snapshot(control, cluster)
    code, details = code_of(
        lambda: control.CreateService(
            CreateServiceRequest(spec=service_spec("web", SecretReference(secret_name="nope")))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details, details
    assert details.startswith("spec.task.container.secrets[0].secret_name: "), details
    assert snapshot(control, cluster) == before
    for bad, field in [
        (SecretReference(secret_name="api_key", target="../x"), "target"),
        (SecretReference(secret_name="api_key", mode=0o1777), "mode"),
        (SecretReference(), "secret_name"),
    ]:
        code, details = code_of(
            lambda bad=bad: control.CreateService(  # type: ignore[misc]
                CreateServiceRequest(spec=service_spec("web", bad))
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"spec.task.container.secrets[0].{field}: "), details
    assert snapshot(control, cluster) == before
    assert not control.ListServices(ListServicesRequest()).services

    # the CLI's Docker syntax; the controller resolves the name to the ID
    cluster.cli(
        "service",
        "create",
        "--name",
        "web",
        "--constraint",
        "node.name==n1",
        "--secret",
        "source=api_key,target=key.txt,uid=1000,mode=0400",
        "busybox",
        "sleep",
        "3600",
    )
    service = control.GetService(GetServiceRequest(service="web"))
    [ref] = service.spec.task.container.secrets
    assert (ref.secret_id, ref.secret_name, ref.target, ref.uid, ref.mode) == (
        secret.id,
        "api_key",
        "key.txt",
        1000,
        0o400,
    )

    def running() -> bool:
        tasks = control.ListTasks(ListTasksRequest(services=["web"])).tasks
        return any(t.status.state == State.RUNNING for t in tasks)

    cluster.wait_for(running, "the task running on n1")
    [task] = control.ListTasks(ListTasksRequest(services=["web"])).tasks
    assert task.spec.container.secrets[0].secret_id == secret.id

    # removal is refused while the service uses it, and writes nothing
    before = snapshot(control, cluster)
    code, details = code_of(lambda: control.RemoveSecret(RemoveSecretRequest(secret="api_key")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "web" in details, details
    assert snapshot(control, cluster) == before
    refused = cluster.cli("secret", "rm", "api_key", check=False)
    assert refused.returncode == 1 and "in use by service web" in refused.stderr

    # only n1's agent received it: each agent logs the IDs of the secrets its sets carry
    def received(name: str) -> set[str]:
        ids: set[str] = set()
        for line in cluster.agents[name].log().splitlines():
            if "session.assignments" in line:
                ids.update(re.findall(r"[0-9a-f]{24}", line.partition("secrets")[2]))
        return ids

    cluster.wait_for(lambda: secret.id in received("n1"), "n1 receives the secret")
    assert received("n2") == received("n3") == set()
    assert other.id not in received("n1")  # not referenced by any task there
    for name in ("n1", "n2", "n3"):  # the data is in no log and no file of any agent
        assert DATA not in cluster.agents[name].log().encode()
        for path in (cluster.root / f"agent-{name}").rglob("*"):
            if path.is_file():
                assert DATA not in path.read_bytes(), path

    rotate_and_remove_the_old_one(cluster, control)
    control.RemoveService(RemoveServiceRequest(service="web"))
    cluster.cli("secret", "rm", "api_key_v2", "unused")


def rotate_and_remove_the_old_one(cluster: Cluster, control: Any) -> None:
    """Service web moves from api_key to api_key_v2; the old one can go in the end."""
    # rotate: a new secret in, the old one out; the old one stays while a rollback could
    # bring it back (the previous spec) or an old task still has it
    control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="api_key_v2", data=b"new")))
    cluster.cli(
        "service",
        "update",
        "--secret-rm",
        "api_key",
        "--secret-add",
        "source=api_key_v2,target=key.txt",
        "web",
    )
    service = control.GetService(GetServiceRequest(service="web"))
    assert [r.secret_name for r in service.spec.task.container.secrets] == ["api_key_v2"]
    before = snapshot(control, cluster)
    refused = cluster.cli("secret", "rm", "api_key", check=False)
    assert refused.returncode == 1, refused.stderr
    assert "service web (its previous spec, the rollback target)" in refused.stderr
    assert snapshot(control, cluster) == before
    # once the new spec is the rollback target too and the old tasks ended, it can go
    cluster.cli("service", "update", "--force", "web")

    def removed() -> bool:
        return cluster.cli("secret", "rm", "api_key", check=False).returncode == 0

    cluster.wait_for(removed, "the old secret removable once its tasks ended", 30)


def test_a_read_only_identity_lists_secrets_but_cannot_write_them(
    cluster: Cluster, control: Any
) -> None:
    control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="ro_test", data=DATA)))
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
    credentials = grpc.ssl_channel_credentials(
        (out / "ca.pem").read_bytes(),
        (out / "key.pem").read_bytes(),
        (out / "cert.pem").read_bytes(),
    )
    with grpc.secure_channel(cluster.address, credentials) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        [listed] = stub.ListSecrets(ListSecretsRequest(), timeout=5).secrets
        assert listed.spec.name == "ro_test" and not listed.spec.data
        assert not stub.GetSecret(GetSecretRequest(secret="ro_test"), timeout=5).spec.data
        for call in (
            lambda: stub.CreateSecret(
                CreateSecretRequest(spec=SecretSpec(name="x", data=b"x")), timeout=5
            ),
            lambda: stub.RemoveSecret(RemoveSecretRequest(secret="ro_test"), timeout=5),
        ):
            assert code_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert [s.spec.name for s in control.ListSecrets(ListSecretsRequest()).secrets] == ["ro_test"]
