"""Services on real runc: three agent processes, a real registry, a real controller."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.agent.images.build import Dir, RandomFile, build_image, busybox_layer, busybox_spec
from dockyard.agent.images.models import Image
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService
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
from dockyard.v1.peer_pb2 import FetchBlobRequest
from dockyard.v1.peer_pb2_grpc import PeerStub
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
    node_ids: list[str] = []
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
        node_ids.extend(n["id"] for n in cluster.nodes().values())
        yield cluster
    finally:
        cluster.stop()
        for name in NAMES:
            cleanup_everything(
                cluster.root / f"agent-{name}" / "runtime",
                f"dockyard-test-{cluster.root.name}-{name}",
            )
        for node_id in node_ids:  # an agent stopped with tasks keeps its secrets' tmpfs
            secrets = SECRETS_ROOT / node_id
            if _secret_mounts([node_id]):
                subprocess.run(["umount", "-l", str(secrets)], check=False)
            if secrets.exists():
                shutil.rmtree(secrets, ignore_errors=True)


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
            records.append(
                stub.Inspect(ContainerRef(container=task.status.container_id), timeout=10)
            )
    return records


def test_replicas_run_the_pinned_digest_and_privileged_needs_the_policy(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    cluster = runc_cluster
    ref = f"{image_registry.server.host}/pin/runc:1"
    subprocess.run(
        [*BUILD, "busybox", "--tag", ref, "--push"], check=True, capture_output=True, timeout=120
    )
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
        moved = subprocess.run(
            [*BUILD, "busybox", "--tag", ref, "--push", "--compression", "none"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
        assert moved != pinned
        service = control.GetService(GetServiceRequest(service="pinned"))
        spec.CopyFrom(service.spec)
        spec.replicated.replicas = 4
        control.UpdateService(
            UpdateServiceRequest(service="pinned", version=service.meta.version, spec=spec)
        )
        cluster.wait_for(lambda: len(running(control, "pinned")) == 4, "4 pinned tasks", 60)
        records = containers_of(cluster, running(control, "pinned"))
        assert {r.image_digest for r in records} == {pinned}  # not the moved tag's
        assert all(not r.config.privileged for r in records)

        current = control.GetCluster(GetClusterRequest())
        current.spec.allow_privileged = True
        control.UpdateCluster(UpdateClusterRequest(version=current.meta.version, spec=current.spec))
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
            # Written aside, then renamed: the test reads a file as soon as it appears.
            [
                "sh",
                "-c",
                "grep ' /cache ' /proc/mounts | cut -d' ' -f3 > /data/.$(hostname); "
                "mv /data/.$(hostname) /data/$(hostname); "
                "hostname > /vol/$(hostname); sleep 300",
            ]
        )
        spec.task.container.stop_grace_seconds = 0
        spec.task.container.mounts.add(type="bind", source=str(data), target="/data")
        spec.task.container.mounts.add(type="tmpfs", target="/cache", tmpfs_size_bytes=1 << 20)
        spec.task.container.mounts.add(type="volume", source="svcdata", target="/vol")
        spec.replicated.replicas = 2
        control.CreateService(CreateServiceRequest(spec=spec))

        def written() -> list[Path]:
            return [f for f in data.iterdir() if not f.name.startswith(".")]

        runc_cluster.wait_for(lambda: len(written()) == 2, "both tasks wrote", 60)
        assert {f.read_text().strip() for f in written()} == {"tmpfs"}
        names = {n["id"]: name for name, n in runc_cluster.nodes().items()}
        for task in running(control, "mounts"):  # each node made the volume it lacked
            volumes = runc_cluster.cli(
                "volume", "ls", "-o", "json", host=runc_cluster.agent_address(names[task.node_id])
            ).stdout
            (volume,) = [v for v in json.loads(volumes) if v["name"] == "svcdata"]
            assert Path(volume["mountpoint"]).is_dir() and volume["used_by"]
    finally:
        control.close()


SECRET_DATA = b"runc-secret-bytes-4f1c9e\n"


SECRETS_ROOT = Path("/run/dockyard/secrets")
"""Shared by every agent on the host: a test looks only at its own nodes' dirs."""


def _secret_mounts(node_ids: Iterable[str]) -> list[str]:
    """The mounts of these nodes' secret dirs (never another agent's of this host)."""
    dirs = [f" {SECRETS_ROOT / node_id}" for node_id in node_ids]
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if any(f"{d} " in line or f"{d}/" in line for d in dirs)
    ]


def test_a_task_reads_its_secret_at_run_secrets_and_no_file_outlives_it(
    runc_cluster: Cluster, image_registry: ImageRegistry, tmp_path: Path
) -> None:
    from dockyard.v1.control_pb2 import CreateSecretRequest, RemoveServiceRequest
    from dockyard.v1.workloads_pb2 import SecretReference, SecretSpec

    cluster = runc_cluster
    out = tmp_path / "out"
    out.mkdir()
    control = cluster.control()
    try:
        control.CreateSecret(CreateSecretRequest(spec=SecretSpec(name="tok", data=SECRET_DATA)))
        spec = ServiceSpec(name="reader")
        spec.task.container.image = image_registry.busybox
        spec.task.container.command.extend(
            [
                "sh",
                "-c",
                "cat /run/secrets/token > /out/token; "
                "stat -c '%u %g %a' /run/secrets/token > /out/stat; "
                "echo x 2> /out/write > /run/secrets/token || true; sleep 300",
            ]
        )
        spec.task.container.stop_grace_seconds = 0
        spec.task.container.mounts.add(type="bind", source=str(out), target="/out")
        spec.task.container.secrets.append(
            SecretReference(secret_name="tok", target="token", uid=1000, gid=1001, mode=0o440)
        )
        spec.replicated.replicas = 1
        control.CreateService(CreateServiceRequest(spec=spec))
        cluster.wait_for(
            lambda: bool(running(control, "reader")) and (out / "write").exists(),
            "the task to read its secret",
            60,
        )
        assert (out / "token").read_bytes() == SECRET_DATA
        assert (out / "stat").read_text().split() == ["1000", "1001", "440"]
        assert "Read-only file system" in (out / "write").read_text()

        [task] = running(control, "reader")
        node_ids = {n["id"]: name for name, n in cluster.nodes().items()}
        task_dir = SECRETS_ROOT / task.node_id / task.id
        assert (task_dir / "token").read_bytes() == SECRET_DATA
        assert _secret_mounts([task.node_id]), "the secrets' directory is a tmpfs"
        # only on the node of the task; never in an agent's state dir
        for node_id in node_ids:
            if node_id != task.node_id:
                assert not (SECRETS_ROOT / node_id).exists()
        for name in NAMES:
            for path in (cluster.root / f"agent-{name}").rglob("*"):
                if path.is_file() and not path.is_symlink() and "images" not in path.parts:
                    assert SECRET_DATA not in path.read_bytes(), path

        control.RemoveService(RemoveServiceRequest(service="reader"))
        cluster.wait_for(lambda: not task_dir.exists(), "the task's secret files removed", 60)
    finally:
        control.close()
    cluster.stop()  # each agent unmounts its secrets' tmpfs once no task has files on it
    assert not _secret_mounts(node_ids)
    assert not [node_id for node_id in node_ids if (SECRETS_ROOT / node_id).exists()]


def test_a_new_replica_takes_its_layers_from_the_node_that_runs_the_image(
    runc_cluster: Cluster, image_registry: ImageRegistry, tmp_path: Path
) -> None:
    """The registry loses the image (its manifest and its own blobs) once one node runs
    it: a second replica on another node can only start by fetching it from that node
    (mutual TLS). The spec is pinned by digest, so the manifest may come from a peer."""
    cluster = runc_cluster
    ref = f"{image_registry.server.host}/peer/app:1"
    image = asyncio.run(_push_unique_image(ref, tmp_path / "build"))
    control = cluster.control()
    try:
        spec = ServiceSpec(name="peered")
        spec.task.container.image = ref
        spec.task.container.command.extend(["sleep", "3600"])
        spec.task.container.stop_grace_seconds = 0
        spec.task.placement.max_replicas_per_node = 1
        spec.replicated.replicas = 1
        control.CreateService(CreateServiceRequest(spec=spec))
        cluster.wait_for(lambda: len(running(control, "peered")) == 1, "the first replica", 60)
        (first,) = running(control, "peered")
        unique = [image.config_digest, image.layers[-1].digest]  # busybox's layer is shared
        repository = f"http://{image_registry.server.host}/v2/peer/app"
        for path in [f"manifests/{image.digest}", *(f"blobs/{d}" for d in unique)]:
            request = urllib.request.Request(f"{repository}/{path}", method="DELETE")
            with urllib.request.urlopen(request, timeout=5) as answer:
                assert answer.status == 202
        cluster.cli("service", "scale", "peered=2")
        cluster.wait_for(lambda: len(running(control, "peered")) == 2, "the second replica", 60)
        (second,) = [t for t in running(control, "peered") if t.id != first.id]
        assert second.node_id != first.node_id
        names = {n["id"]: name for name, n in cluster.nodes().items()}
        log = cluster.agents[names[second.node_id]].log()
        fetched = [
            json.loads(line) for line in log.splitlines() if "blob.fetched_from_peer" in line
        ]
        assert {image.digest, *unique} <= {event["digest"] for event in fetched}
        assert "image.manifest_from_peer" in log
        assert {event["peer"] for event in fetched} == {cluster.agent_address(names[first.node_id])}
    finally:
        control.close()


async def _push_unique_image(ref: str, store: Path) -> Image:
    """busybox plus a layer of random bytes, pushed to ``ref``."""
    images = ImageService(store)
    reference = parse_reference(ref)
    layers = [busybox_layer(), [Dir("data"), RandomFile("data/unique.bin", 64 * 1024)]]
    image = await build_image(images.store, layers, reference, busybox_spec())
    await images.push(reference)
    return image


def test_a_removed_nodes_certificate_is_refused_by_the_other_agents(
    runc_cluster: Cluster,
) -> None:
    """A node may fetch blobs from other agents (Peer.FetchBlob) until it is removed:
    `node rm` revokes its certificate, and the controller sends agents the revocation."""
    cluster = runc_cluster
    pki_dir = cluster.root / "agent-r1" / "pki"
    credentials = grpc.ssl_channel_credentials(
        (pki_dir / "ca.pem").read_bytes(),
        (pki_dir / "node-key.pem").read_bytes(),
        (pki_dir / "node.pem").read_bytes(),
    )
    missing = FetchBlobRequest(digest="sha256:" + "0" * 64)

    def fetch_as_r1() -> grpc.RpcError:
        with grpc.secure_channel(
            cluster.agent_address("r2"),
            credentials,
            [("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            try:
                list(PeerStub(channel).FetchBlob(missing, timeout=10))
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("a blob no node has was served")

    assert fetch_as_r1().code() == grpc.StatusCode.NOT_FOUND  # a member: let in
    cluster.agents["r1"].stop()
    cluster.cli("node", "rm", "--force", "r1")
    cluster.wait_for(
        lambda: fetch_as_r1().code() == grpc.StatusCode.UNAUTHENTICATED,
        "r2 refusing r1's revoked certificate",
        20,
    )
    assert "is revoked" in (fetch_as_r1().details() or "")
    assert cluster.controller is not None
    cluster.controller.stop()  # the list is kept: refused from the agent's start, before
    cluster.agents["r2"].stop()  # any controller answers
    cluster.start_agent("r2")
    r2 = cluster.agent_address("r2")
    cluster.wait_for(
        lambda: cluster.cli("info", host=r2, check=False).returncode == 0, "r2 answering again", 30
    )
    assert fetch_as_r1().code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_agents_leave_the_hosts_routes_and_bridges_alone(
    runc_cluster: Cluster, image_registry: ImageRegistry
) -> None:
    """Three agents on this host: each on a bridge and subnet of its own, and none
    rewrites the host's peer routes (an agent's sync of the network map deletes every
    proto-77 route it did not make: here, a blackhole route of a free subnet)."""
    from tests.network.conftest import free_subnet

    cluster = runc_cluster
    bridges = {bridge for bridge, _ in cluster.networks.values()}
    subnets = {subnet for _, subnet in cluster.networks.values()}
    assert len(bridges) == len(subnets) == len(NAMES) and "dockyard0" not in bridges
    sentinel = free_subnet()
    subprocess.run(["ip", "route", "add", "blackhole", sentinel, "proto", "77"], check=True)
    control = cluster.control()
    try:
        applied = {
            name: cluster.agents[name].log().count('"cluster_network.applied"') for name in NAMES
        }
        spec = ServiceSpec(name="maps")
        spec.task.container.image = image_registry.busybox
        spec.task.container.command.extend(["sleep", "300"])
        spec.task.container.stop_grace_seconds = 0
        spec.replicated.replicas = 1
        control.CreateService(CreateServiceRequest(spec=spec))  # a new map for every node
        cluster.wait_for(
            lambda: all(
                cluster.agents[name].log().count('"cluster_network.applied"') > applied[name]
                for name in NAMES
            ),
            "every agent applied a new map",
        )
        routes = subprocess.run(
            ["ip", "-4", "route", "show", "proto", "77"], capture_output=True, text=True, check=True
        ).stdout
        assert sentinel in routes, routes
        nodes = cluster.nodes()
        for name in NAMES:  # each node reports the subnet of its own bridge
            description = nodes[name]["description"]
            assert description["bridge_subnet"] == cluster.networks[name][1], description
    finally:
        control.close()
        subprocess.run(
            ["ip", "route", "del", "blackhole", sentinel, "proto", "77"],
            capture_output=True,
            check=False,
        )
