"""Secrets encrypted at rest, end to end: a real controller process on its embedded etcd,
the raw values read back from etcd, and a node's Session opened by hand (what a node
receives: the secret's plaintext, or no secret at all, never the ciphertext)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.controller.at_rest import MAGIC, sealed_key_id
from dockyard.controller.store import CONFIG_DATA, REGISTRY_AUTHS, SECRET_DATA, Kind, Store
from dockyard.v1.control_pb2 import (
    CreateConfigRequest,
    CreateSecretRequest,
    CreateServiceRequest,
)
from dockyard.v1.dispatcher_pb2 import AssignmentSet
from dockyard.v1.workloads_pb2 import (
    ConfigSpec,
    RegistryAuth,
    SecretReference,
    SecretSpec,
    ServiceSpec,
)
from tests.conftest import Cluster
from tests.served_dispatcher import node_session

DATA = b"at-rest-Pa55word-\x00\xff-plaintext-marker"
PASSWORD = "registry-pa55-at-rest"
NODE_ID = "atrestnode0123456789"
# No heartbeats are sent by the hand-made session: the node must stay READY meanwhile.
SLOW_NODES = ["--node-grace", "120", "--node-down-grace", "600"]


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    yield cluster_factory(insecure=True)


def start(cluster: Cluster, key_file: Path | None) -> None:
    if cluster.controller is not None:
        cluster.controller.stop()
    keys = ["--encryption-key-file", str(key_file)] if key_file else []
    cluster.start_controller([*SLOW_NODES, *keys])


def key_tool(cluster: Cluster, *args: str, check: bool = True) -> Any:
    return cluster.run_tool("dockyard-controller", "encryption-key", *args, check=check)


def raw_data(
    cluster: Cluster, secret_id: str, value: bytes | None = None, kind: Kind[Any] = SECRET_DATA
) -> bytes:
    """The value of `secretdata/<id>` (or another kind's) in etcd as it is stored (with
    `value`: write it)."""
    tls = cluster.etcd_tls
    assert tls is not None

    async def run() -> bytes:
        store = Store([cluster_etcd(cluster)], "/dockyard", **tls.store_credentials())
        await store.connect(10)
        try:
            if value is not None:
                await store.commit([store.raw_op(kind, secret_id, value, expect=None)])
            found = await store.get_raw(kind, secret_id)
            assert found is not None
            return found[0]
        finally:
            await store.close()

    return asyncio.run(run())


def cluster_etcd(cluster: Cluster) -> str:
    from dockyard.v1.control_pb2 import GetInfoRequest

    control = cluster.control()
    try:
        return str(control.GetInfo(GetInfoRequest()).etcd_endpoints[0])
    finally:
        control.close()


def create_secret(cluster: Cluster, name: str, data: bytes = DATA) -> str:
    control = cluster.control()
    try:
        spec = SecretSpec(name=name, data=data)
        return str(control.CreateSecret(CreateSecretRequest(spec=spec)).id)
    finally:
        control.close()


def create_service(cluster: Cluster, name: str, secret: str, password: str = "") -> None:
    """A service of one task on the hand-made node, with the secret (and `password`:
    registry credentials)."""
    spec = ServiceSpec(name=name)
    spec.task.container.image = "busybox"
    spec.task.container.secrets.append(SecretReference(secret_name=secret))
    spec.task.placement.constraints.append("node.name==vault")
    spec.replicated.replicas = 1
    control = cluster.control()
    try:
        request = CreateServiceRequest(spec=spec)
        if password:
            request.registry_auth.CopyFrom(
                RegistryAuth(registry="registry.example:5000", username="u", password=password)
            )
        control.CreateService(request)
    finally:
        control.close()


def assignments_with(
    cluster: Cluster, secret_id: str, then: Callable[[], None] | None = None
) -> AssignmentSet:
    """Open the node's session (`then` runs once it is open: e.g. create the service),
    and wait for an assignment set with a task that uses the secret."""

    async def run() -> AssignmentSet:
        async with node_session(cluster.address, NODE_ID, "vault") as node:
            if then is not None:
                await asyncio.to_thread(then)
            while True:
                message = await asyncio.wait_for(node.call.read(), 30)
                if not message.HasField("assignments"):
                    continue
                if any(
                    r.secret_id == secret_id
                    for t in message.assignments.tasks
                    for r in t.spec.container.secrets
                ):
                    return message.assignments

    return asyncio.run(run())


def node_receives(
    cluster: Cluster, secret_id: str, then: Callable[[], None] | None = None
) -> bytes | None:
    """The secret's data in the node's first set with a task that uses it; None when the
    set came without it."""
    sent = [s for s in assignments_with(cluster, secret_id, then).secrets if s.id == secret_id]
    return bytes(sent[0].spec.data) if sent else None


def test_init_makes_a_private_key_file_and_run_refuses_a_loose_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys" / "cluster.keys"
    made = cluster.run_tool(
        "dockyard-controller",
        "init",
        "--state-dir",
        str(tmp_path / "init-state"),
        "--context",
        "atrest",
        "--encryption-key-file",
        str(key_file),
        "--settings-file",
        str(tmp_path / "settings"),
        "--no-start",
    )
    assert str(key_file) in made.stdout, made.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # the unit runs with it
    assert f"--encryption-key-file {key_file}" in (tmp_path / "settings").read_text()
    [key_id] = [
        line.split()[0] for line in key_tool(cluster, "ls", str(key_file)).stdout.splitlines()
    ]
    assert key_id.startswith("key-")
    key_file.chmod(0o644)
    refused = cluster.run_tool(
        "dockyard-controller",
        "run",
        "--insecure",
        "--state-dir",
        str(tmp_path / "run-state"),
        "--encryption-key-file",
        str(key_file),
        check=False,
    )
    assert refused.returncode != 0
    assert "mode 0644" in refused.stderr and "chmod 600" in refused.stderr, refused.stderr
    assert not (tmp_path / "run-state").exists()  # refused before anything started


def test_secret_data_is_ciphertext_in_etcd_and_plaintext_on_its_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    key_file = tmp_path / "cluster.keys"
    [key_id] = key_tool(cluster, "create", str(key_file)).stdout.split()
    start(cluster, key_file)
    secret_id = create_secret(cluster, "db_password")
    stored = raw_data(cluster, secret_id)
    assert DATA not in stored and stored.startswith(MAGIC)
    assert sealed_key_id(stored) == key_id
    # configs are not secrets: plaintext, as before
    control = cluster.control()
    try:
        config = control.CreateConfig(
            CreateConfigRequest(spec=ConfigSpec(name="app_conf", data=b"plain config"))
        )
    finally:
        control.close()
    assert raw_data(cluster, config.id, kind=CONFIG_DATA) == b"plain config"
    # two writes of one value never look alike (a fresh nonce each)
    other = raw_data(cluster, create_secret(cluster, "same_bytes"))
    assert other[-len(DATA) :] != stored[-len(DATA) :]
    got = assignments_with(
        cluster, secret_id, lambda: create_service(cluster, "db", "db_password", PASSWORD)
    )
    assert [s.spec.data for s in got.secrets] == [DATA]
    # the service's registry credentials too: ciphertext in etcd, plaintext to the node
    [(service_id, auth)] = got.registry_auths.items()
    assert auth.password == PASSWORD
    stored_auth = raw_data(cluster, service_id, kind=REGISTRY_AUTHS)
    assert PASSWORD.encode() not in stored_auth and sealed_key_id(stored_auth) == key_id


def test_a_ciphertext_moved_to_another_secret_is_not_sent(cluster: Cluster, tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.keys"
    key_tool(cluster, "create", str(key_file))
    start(cluster, key_file)
    original = create_secret(cluster, "original", b"the original secret")
    target = create_secret(cluster, "target", b"the target secret")
    raw_data(cluster, target, raw_data(cluster, original))  # same key, another record
    got = node_receives(cluster, target, lambda: create_service(cluster, "svc", "target"))
    assert got is None  # the task arrives without it: the agent rejects the task
    assert cluster.controller is not None
    log = cluster.controller.log()
    assert "assignments.secret_undecryptable" in log
    assert f"secretdata/{target}: does not decrypt" in log


def test_plaintext_records_are_read_then_reencrypted_and_rotated(
    cluster: Cluster, tmp_path: Path
) -> None:
    # before: no key file, plaintext in etcd as always
    start(cluster, None)
    secret_id = create_secret(cluster, "api_key")
    assert raw_data(cluster, secret_id) == DATA
    got = assignments_with(
        cluster, secret_id, lambda: create_service(cluster, "api", "api_key", PASSWORD)
    )
    [service_id] = got.registry_auths
    assert PASSWORD.encode() in raw_data(cluster, service_id, kind=REGISTRY_AUTHS)
    # turned on: the old plaintext record is still sent, and the leader re-encrypts it
    key_file = tmp_path / "cluster.keys"
    [first] = key_tool(cluster, "create", str(key_file)).stdout.split()
    start(cluster, key_file)
    assert node_receives(cluster, secret_id) == DATA
    cluster.wait_for(
        lambda: sealed_key_id(raw_data(cluster, secret_id)) == first, "the record re-encrypted"
    )
    assert DATA not in raw_data(cluster, secret_id)
    assert sealed_key_id(raw_data(cluster, service_id, kind=REGISTRY_AUTHS)) == first
    [auth] = assignments_with(cluster, secret_id).registry_auths.values()
    assert auth.password == PASSWORD
    # rotation: a second key (decrypts only), then promoted: the leader re-encrypts
    [second] = key_tool(cluster, "add", str(key_file)).stdout.split()
    key_tool(cluster, "promote", str(key_file), second)
    start(cluster, key_file)
    cluster.wait_for(
        lambda: sealed_key_id(raw_data(cluster, secret_id)) == second,
        "the record re-encrypted under the new key",
    )
    key_tool(cluster, "remove", str(key_file), first)
    start(cluster, key_file)
    assert node_receives(cluster, secret_id) == DATA
    # a key file without the record's key: never garbage, a clear error naming the key
    (tmp_path / "other.keys").unlink(missing_ok=True)
    [third] = key_tool(cluster, "create", str(tmp_path / "other.keys")).stdout.split()
    start(cluster, tmp_path / "other.keys")
    assert node_receives(cluster, secret_id) is None
    assert cluster.controller is not None
    log = cluster.controller.log()
    assert f"encrypted with key id '{second}', which is not in" in log, log[-3000:]
    assert sealed_key_id(raw_data(cluster, secret_id)) == second  # left as it was
    assert third != second
