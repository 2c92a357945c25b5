"""The agent's container seam: a leaf runtime, one container service, one task adapter.

No runc needed: the service runs over the hollow runtime (the integration tests under
tests/runtime, tests/worker and tests/network run it over real runc).
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from dockyard.agent.containers.backends import EngineImages, EngineNetwork, engine_ref
from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.meta import ContainerMeta
from dockyard.agent.containers.names import NAME_RE
from dockyard.agent.containers.request import ContainerRequest, parse_create
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.executors.task import TaskExecutor, task_request
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.runtime.base import (
    ContainerRuntime,
    ContainerSpec,
    NetworkEndpoint,
    NetworkInfo,
    PortMapping,
)
from dockyard.agent.runtime.docker import DockerRuntime, engine_body
from dockyard.agent.runtime.hollow import HollowRuntime
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from dockyard.agent.secret_files import SecretMount
from dockyard.cli.commands.container_run import RunError, RunFlags, build_request
from dockyard.common.privilege import parse_capability
from dockyard.common.validation import CONTAINER_NAME_PATTERN
from dockyard.v1.containers_pb2 import CreateContainerRequest
from tests.worker.conftest import make_task

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_runtimes_are_leaves() -> None:
    """No runtime module imports the network, images, containers or the API's messages."""
    banned = (
        "dockyard.agent.network",
        "dockyard.agent.images",
        "dockyard.agent.containers",
        "dockyard.agent.executor",
        "dockyard.v1",
    )
    for path in (AGENT / "runtime").rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(banned)]
        assert not bad, f"{path.relative_to(AGENT)} imports {bad}"


def test_every_backend_implements_the_protocol(tmp_path: Path) -> None:
    for runtime in (RuncRuntime(tmp_path / "runc"), HollowRuntime(), DockerRuntime()):
        assert isinstance(runtime, ContainerRuntime)


def test_the_fleet_is_not_a_runtime() -> None:
    assert not (AGENT / "runtime" / "hollow" / "fleet.py").exists()
    assert (AGENT / "fleet.py").exists()


def test_a_task_becomes_a_spec_without_the_local_api() -> None:
    task = make_task("t1", ["sleep", "1"], image="registry.local/app@sha256:" + "a" * 64)
    task.spec.ports.add(target_port=80, published_port=8080, protocol="TCP")
    task.spec.container.mounts.add(type="volume", source="data", target="/data")
    task.spec.container.mounts.add(type="tmpfs", target="/cache", tmpfs_size_bytes=1024)
    request = task_request(task, [SecretMount("/run/s/x", "/run/secrets/x")])
    spec = request.spec
    assert request.image.digest == "sha256:" + "a" * 64  # parsed once, here
    assert spec.name == "web.1.t1" and spec.labels["dockyard.task.id"] == "t1"
    assert spec.network == "bridge" and spec.ports == (PortMapping(80, "tcp", 8080),)
    assert [(v.volume, v.container, v.read_only) for v in spec.volumes] == [
        ("data", "/data", False),
        ("", "/run/secrets/x", True),
    ]
    assert spec.restart_policy.name.value == "no" and spec.tmpfs[0].size_bytes == 1024
    assert spec.ephemeral  # never started again: its layer need not survive a crash
    assert "containers_pb2" not in (AGENT / "executors" / "task.py").read_text()


def test_ingress_ports_take_no_node_port_where_the_node_meshes_them() -> None:
    task = make_task("t1", ["sleep", "1"])
    task.spec.ports.add(target_port=80, published_port=30000, publish_mode="ingress")
    task.spec.ports.add(target_port=81, published_port=8081, publish_mode="host")
    task.networks.add(network_id="ing", address="10.255.0.3")  # the ingress network's
    meshed = task_request(task, meshes_ingress=True).spec
    assert meshed.ports == (PortMapping(81, "tcp", 8081),) and meshed.network == "bridge"
    alone = task_request(task).spec  # overlays off here: published on the node, as host
    assert alone.ports == (PortMapping(80, "tcp", 30000), PortMapping(81, "tcp", 8081))


def test_a_bad_task_names_its_field() -> None:
    task = make_task("t2", ["true"])
    task.spec.container.env.append("NO_EQUALS")
    with pytest.raises(InvalidArgument, match=r"^env\[0\]: "):
        task_request(task)


def test_a_request_and_its_record_round_trip() -> None:
    request = CreateContainerRequest(
        image="busybox", name="/web", command=["true"], cap_add=["net_admin"], auto_remove=True
    )
    parsed = parse_create(request)
    assert parsed.spec.name == "web" and str(parsed.image) == "docker.io/library/busybox:latest"
    with pytest.raises(InvalidArgument, match=r"^cap_add\[0\]: unknown capability"):
        parse_create(CreateContainerRequest(image="busybox", cap_add=["FLY"]))


def test_one_capability_rule_and_one_name_rule() -> None:
    assert parse_capability("net_admin") == "CAP_NET_ADMIN" and parse_capability("all") == "ALL"
    with pytest.raises(ValueError, match="unknown capability"):
        parse_capability("FLY")
    with pytest.raises(RunError):  # the CLI refused only non-letters before
        build_request(RunFlags(image="busybox", cap_add=("FLY",)))
    assert NAME_RE is CONTAINER_NAME_PATTERN
    with pytest.raises(RunError):  # the CLI let any length through before
        build_request(RunFlags(image="busybox", name="a" * 129))
    assert build_request(RunFlags(image="busybox", name="/" + "a" * 128)).name


class RecordingNetwork(EngineNetwork):
    """The network step as a test double: records what the service asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def attach(self, container_id: str, ports: Sequence[PortMapping]) -> NetworkEndpoint:
        self.calls.append(("attach", container_id))
        return NetworkEndpoint("/run/netns/x", "10.0.0.2", "10.0.0.1")

    async def detach(self, container_id: str) -> None:
        self.calls.append(("detach", container_id))

    def info(self, container_id: str) -> NetworkInfo:
        return NetworkInfo(mode="bridge", ip_address="10.0.0.2")

    async def recover(
        self, keep: Mapping[str, Sequence[PortMapping]]
    ) -> dict[str, NetworkEndpoint]:
        return {}


async def test_the_service_attaches_before_the_runtime_and_detaches_after() -> None:
    network = RecordingNetwork()
    runtime = HollowRuntime(start_delay=0)
    service = ContainerService(runtime, EngineImages(), None, None, network)
    spec = ContainerSpec(
        id="",
        name="web",
        image="busybox",
        lower_dirs=(),
        network="bridge",
        ports=[PortMapping(80)],
        command=["sleep", "5"],
    )
    view = await service.create(ContainerRequest(spec, parse_reference("busybox")))
    cid = view.info.id
    assert network.calls == [("attach", cid)]
    assert (await runtime.inspect(cid)).config.endpoint == NetworkEndpoint(
        "/run/netns/x", "10.0.0.2", "10.0.0.1"
    )  # the runtime got plain values
    assert (await service.inspect("web")).info.network == NetworkInfo("bridge", "10.0.0.2")
    await service.remove(cid, force=True)
    assert network.calls == [("attach", cid), ("detach", cid)]
    await service.close()


async def test_a_started_task_has_its_bridge_address_from_the_start() -> None:
    """`Executor.start` gives the address the start saw: a task that publishes a port
    is on the bridge, one that does not has none; a second start of a running task
    gives the same, and starts nothing."""
    network = RecordingNetwork()
    service = ContainerService(HollowRuntime(start_delay=0), EngineImages(), None, None, network)
    executor = TaskExecutor(service)
    published = make_task("t1", ["sleep", "60"])
    published.spec.ports.add(target_port=80)
    plain = make_task("t2", ["sleep", "60"], slot=2)
    for task in (published, plain):
        await executor.prepare(task, lambda line: None)
    started = await executor.start(published)
    assert started.address == "10.0.0.2"
    assert (await service.inspect(started.container_id)).info.state.status.value == "running"
    assert await executor.start(published) == started
    assert (await executor.start(plain)).address == ""
    await service.close()


async def test_a_bridge_container_needs_a_network_step() -> None:
    service = ContainerService(HollowRuntime(), EngineImages(), None, None, None)
    spec = ContainerSpec(id="", name="web", image="busybox", lower_dirs=(), network="bridge")
    with pytest.raises(Exception, match="no bridge network"):
        await service.create(ContainerRequest(spec, parse_reference("busybox")))


def test_the_engine_gets_a_pinned_image_and_the_spec_fields() -> None:
    ref = parse_reference("registry.local/app:1@sha256:" + "b" * 64)
    assert engine_ref(ref) == "registry.local/app@sha256:" + "b" * 64
    spec = ContainerSpec(
        id="x",
        name="web",
        image="busybox",
        lower_dirs=(),
        memory_bytes=1 << 26,
        command=["true"],
        labels={"dockyard.task.id": "t"},
    )
    body = engine_body(spec)
    assert body["HostConfig"]["Memory"] == 1 << 26 and body["Cmd"] == ["true"]
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "no"} and "Entrypoint" not in body
    assert "ExtraHosts" not in body["HostConfig"] and "StopSignal" not in body
    assert "Tty" not in body


def test_the_engine_gets_the_service_fields_of_compose_files() -> None:
    spec = ContainerSpec(
        id="x",
        name="web",
        image="busybox",
        lower_dirs=(),
        extra_hosts=["10.0.0.5 db"],
        dns_servers=["1.1.1.1"],
        dns_search=["corp.example"],
        init=True,
        ulimits=[("nofile", 10, 20)],
        sysctls={"net.core.somaxconn": "512"},
        stop_signal="SIGUSR1",
        log_max_size=1 << 20,
        log_max_files=2,
        tty=True,
    )
    body = engine_body(spec)
    assert body["Tty"] is True
    host = body["HostConfig"]
    assert (host["ExtraHosts"], host["Dns"], host["DnsSearch"], host["Init"]) == (
        ["db:10.0.0.5"],
        ["1.1.1.1"],
        ["corp.example"],
        True,
    )
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 20}]
    assert host["Sysctls"] == {"net.core.somaxconn": "512"}
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1048576", "max-file": "2"},
    }
    assert body["StopSignal"] == "SIGUSR1"


def test_old_service_records_still_read() -> None:
    old = {
        "id": "c1",
        "image_digest": "sha256:1",
        "manually_stopped": True,
        "request": {"image": "busybox", "autoRemove": True},
    }
    meta = ContainerMeta.from_dict(json.loads(json.dumps(old)))
    assert (meta.auto_remove, meta.manually_stopped) == (True, True)
    assert ContainerMeta.from_dict(meta.to_dict()).auto_remove


def test_a_nodes_tasks_parse_each_image_reference_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node runs a few images: each text is parsed once, a bad one raises each time."""
    from dockyard.agent.executors import task as task_module

    parsed: list[str] = []

    def parse(field: str, text: str) -> object:
        parsed.append(text)
        return parse_create_ref(field, text)

    parse_create_ref = task_module.parse_image_ref
    monkeypatch.setattr(task_module, "parse_image_ref", parse)
    image = f"registry.local/once-{uuid.uuid4().hex[:8]}:1"  # not parsed before
    first = task_request(make_task("t1", ["true"], image=image))
    second = task_request(make_task("t2", ["true"], image=image))
    assert first.image == second.image == parse_reference(image)
    assert parsed == [image]
    for _ in range(2):
        with pytest.raises(InvalidArgument, match=r"^image: "):
            task_request(make_task("t3", ["true"], image="Bad:Ref"))
    assert parsed == [image, "Bad:Ref", "Bad:Ref"]
