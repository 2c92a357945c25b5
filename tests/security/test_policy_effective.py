"""The privileged policy covers what is privileged in effect (capabilities beyond the
default set, bind mounts of protected host paths, the host's network), for service
create and update, and every rollback target (manual or automatic) is held to the
policy in force when it would be restored. Real controller and hollow agents."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.agent.containers.admission import resolve_binds
from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.runtime.base import VolumeMount
from dockyard.common.etcd_server import EtcdServer
from dockyard.common.metadata import WARNING_KEY
from dockyard.common.privilege import privileges
from dockyard.controller.cluster import CLUSTER_ID, ClusterRecord, PolicyDenied, privileges_of
from dockyard.controller.services import ServiceRegistry
from dockyard.controller.store import CLUSTER, SERVICE_NAMES, Conflict, Store
from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import containers_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetClusterRequest,
    GetServiceRequest,
    ListServicesRequest,
    ListTasksRequest,
    UpdateClusterRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import Cluster as ClusterRecordProto
from dockyard.v1.types_pb2 import ClusterSpec, TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec, UpdateConfig, UpdateStatus
from tests.cli.conftest import have_runc
from tests.conftest import BIN, Cluster, Daemon
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything

State = TaskStatus.State


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_hollow_nodes(("n1",))
    yield cluster


def spec_of(
    name: str,
    *,
    command: tuple[str, ...] = ("sleep", "3600"),
    change: Callable[[ServiceSpec], object] = lambda s: None,
) -> ServiceSpec:
    spec = ServiceSpec(name=name)
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(command)
    spec.replicated.replicas = 1
    change(spec)
    return spec


def set_policy(control: Any, allow: bool) -> None:
    current = control.GetCluster(GetClusterRequest())
    spec = ClusterSpec(allow_privileged=allow)
    control.UpdateCluster(UpdateClusterRequest(version=current.meta.version, spec=spec))


def refusal(call: Callable[[], Any]) -> Any:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def update(control: Any, name: str, spec: ServiceSpec | None = None) -> Any:
    """UpdateService with `spec` (None: a rollback), read again while the orchestrator
    writes the update's status; returns the call (its trailing metadata)."""
    for _ in range(20):
        service = control.GetService(GetServiceRequest(service=name))
        request = UpdateServiceRequest(
            service=name, version=service.meta.version, spec=spec, rollback=spec is None
        )
        try:
            return control.UpdateService.with_call(request)[1]
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"service {name} kept changing")


def rollback(control: Any, name: str) -> None:
    update(control, name)


def cap(name: str) -> Callable[[ServiceSpec], object]:
    return lambda s: s.task.container.cap_add.append(name)


def bind(source: str) -> Callable[[ServiceSpec], object]:
    return lambda s: s.task.container.mounts.add(type="bind", source=source, target="/host")


def host_network(spec: ServiceSpec) -> None:
    spec.task.container.network = "host"


# (how the spec is changed, the field named, a word of the reason)
PRIVILEGED_IN_EFFECT = [
    (cap("ALL"), "cap_add[0]", "every capability"),
    (cap("sys_admin"), "cap_add[0]", "SYS_ADMIN"),
    (cap("CAP_SYS_MODULE"), "cap_add[0]", "kernel modules"),
    (cap("NET_ADMIN"), "cap_add[0]", "routes"),
    (cap("BPF"), "cap_add[0]", "BPF"),
    (bind("/"), "mounts[0].source", "holds /var/lib/dockyard"),
    (bind("//etc/./"), "mounts[0].source", "/etc is /etc"),
    (bind("/var/run/docker.sock"), "mounts[0].source", "/run/docker.sock"),
    (bind("/var/lib/dockyard/controller/pki"), "mounts[0].source", "inside /var/lib/dockyard"),
    (bind("/run"), "mounts[0].source", "holds /run/dockyard"),
    (bind("/proc/1/root"), "mounts[0].source", "inside /proc"),
    (bind("/dev"), "mounts[0].source", "/dev"),
    (host_network, "network", "the node's own network namespace"),
]


def test_privileged_in_effect_needs_the_policy_on_create_and_update(
    cluster: Cluster, control: Any
) -> None:
    control.CreateService(CreateServiceRequest(spec=spec_of("plain")))
    plain = control.GetService(GetServiceRequest(service="plain"))
    for change, field, reason in PRIVILEGED_IN_EFFECT:
        spec = spec_of("root", change=change)
        request = CreateServiceRequest(spec=spec)
        denied = refusal(functools.partial(control.CreateService, request))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
        assert denied.details().startswith(f"spec.task.container.{field}: "), denied.details()
        assert reason in denied.details() and "--allow-privileged" in denied.details()
        update = spec_of("plain", change=change)
        denied = refusal(
            functools.partial(
                control.UpdateService,
                UpdateServiceRequest(service="plain", version=plain.meta.version, spec=update),
            )
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, denied.details()
    bogus = refusal(
        functools.partial(
            control.CreateService,
            CreateServiceRequest(spec=spec_of("root", change=cap("CAP_BOGUS"))),
        )
    )
    assert bogus.code() == grpc.StatusCode.INVALID_ARGUMENT  # malformed comes before policy
    assert bogus.details().startswith("spec.task.container.cap_add[0]: unknown capability")
    names = [s.service.spec.name for s in control.ListServices(ListServicesRequest()).services]
    assert names == ["plain"]  # nothing written
    assert control.GetService(GetServiceRequest(service="plain")).meta.version == plain.meta.version

    # what stays allowed: default capabilities, bind mounts of the node's own data
    for change in (
        cap("CHOWN"),
        cap("net_bind_service"),
        bind("/srv/data"),
        bind("/home/app"),
        bind("/var/lib/app"),
        lambda s: setattr(s.task.container, "network", "bridge"),
    ):
        control.CreateService(CreateServiceRequest(spec=spec_of("ok", change=change)))
        cluster.cli("service", "rm", "ok")

    by_cli = cluster.cli(
        "service", "create", "-d", "--name", "c", "--cap-add", "SYS_ADMIN", "busybox", check=False
    )
    assert by_cli.returncode == 1 and "does not allow privileged" in by_cli.stderr, by_cli.stderr

    stack = cluster.root / "stack.yml"
    stack.write_text("services:\n  tool:\n    image: busybox\n    volumes: ['/:/host']\n")
    by_stack = cluster.cli("stack", "deploy", "-c", str(stack), "ops", check=False)
    assert by_stack.returncode == 1 and "mounts[0].source: / holds" in by_stack.stderr, (
        by_stack.stderr
    )

    set_policy(control, True)
    for change, _, _ in PRIVILEGED_IN_EFFECT:
        control.CreateService(CreateServiceRequest(spec=spec_of("root", change=change)))
        cluster.cli("service", "rm", "root")


def tasks_with_sys_admin(control: Any, name: str) -> int:
    tasks = control.ListTasks(ListTasksRequest(services=[name], include_history=True)).tasks
    return sum(1 for t in tasks if "CAP_SYS_ADMIN" in t.spec.container.cap_add)


def test_an_automatic_rollback_is_held_to_the_policy_of_its_time(
    cluster: Cluster, control: Any
) -> None:
    """Allowed when the policy was on, a privileged previous spec is not restored by the
    automatic rollback once the policy is off: the update pauses instead."""
    set_policy(control, True)
    control.CreateService(CreateServiceRequest(spec=spec_of("app", change=cap("CAP_SYS_ADMIN"))))

    def running() -> bool:
        tasks = control.ListTasks(ListTasksRequest(services=["app"])).tasks
        return any(t.status.state == State.RUNNING for t in tasks)

    cluster.wait_for(running, "the privileged task running")

    def failing(spec: ServiceSpec) -> None:
        spec.update.failure_action = UpdateConfig.ROLLBACK
        spec.update.monitor_seconds = 60

    update(control, "app", spec_of("app", command=("sh", "-c", "sleep 3; exit 1"), change=failing))
    assert control.GetService(GetServiceRequest(service="app")).HasField("previous_spec")
    set_policy(control, False)  # before the new task fails
    assert not control.GetService(GetServiceRequest(service="app")).HasField("previous_spec")

    def paused() -> bool:
        status = control.GetService(GetServiceRequest(service="app")).update_status
        assert status.state != UpdateStatus.ROLLBACK_STARTED, status.message
        return bool(status.state == UpdateStatus.PAUSED)

    cluster.wait_for(paused, "the update paused instead of rolling back", 30)
    final = control.GetService(GetServiceRequest(service="app"))
    assert not final.spec.task.container.cap_add
    assert tasks_with_sys_admin(control, "app") == 1  # only the first, from before

    denied = refusal(lambda: rollback(control, "app"))
    assert denied.code() == grpc.StatusCode.FAILED_PRECONDITION, denied.details()
    assert "policy" in denied.details()


def test_a_manual_rollback_and_an_update_away_keep_no_forbidden_target(
    cluster: Cluster, control: Any
) -> None:
    set_policy(control, True)
    control.CreateService(CreateServiceRequest(spec=spec_of("legacy", change=bind("/etc"))))
    set_policy(control, False)
    # the running privileged service stays; moving away from it keeps no way back
    call = update(control, "legacy", spec_of("legacy"))
    warnings = [v for k, v in call.trailing_metadata() if k == WARNING_KEY]
    assert any("not kept for a rollback" in w and "mounts[0].source" in w for w in warnings)
    updated = control.GetService(GetServiceRequest(service="legacy"))
    assert not updated.HasField("previous_spec")
    denied = refusal(lambda: rollback(control, "legacy"))
    assert denied.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert control.GetService(GetServiceRequest(service="legacy")).spec == updated.spec

    # with the policy on again, the same steps keep the rollback target
    set_policy(control, True)
    update(control, "legacy", spec_of("legacy", change=bind("/etc")))
    rollback(control, "legacy")
    rolled = control.GetService(GetServiceRequest(service="legacy"))
    assert not rolled.spec.task.container.mounts
    assert rolled.previous_spec.task.container.mounts[0].source == "/etc"


def test_privileges_are_named_field_by_field() -> None:
    found = privileges(
        privileged=True,
        cap_add=["chown", "sys_ptrace", "CAP_WHATEVER"],
        binds=[("v[0]", "/srv"), ("v[1]", "/var/lib")],
        network="host",
        prefix="c.",
        protected=["/srv/agent-state"],
    )
    assert [p.field for p in found] == [
        "c.privileged",
        "c.cap_add[1]",
        "c.cap_add[2]",
        "c.v[0]",
        "c.v[1]",
        "c.network",
    ]
    assert "holds /srv/agent-state" in found[3].reason
    assert "not in the default capability set" in found[2].reason
    assert (
        privileges(
            privileged=False, cap_add=["KILL", "setuid"], binds=[("b", "/data")], network="bridge"
        )
        == []
    )
    spec = spec_of("x", change=bind("/sys/fs/cgroup"))
    assert [str(p) for p in privileges_of(spec)] == [
        "spec.task.container.mounts[0].source: /sys/fs/cgroup is inside /sys, a protected host path"
    ]


@pytest.fixture
def plain_agent(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A runc agent with no controller and no --allow-privileged; (address, state dir)."""
    if not have_runc():
        pytest.skip("needs root, runc, conmon and /bin/busybox")
    state = tmp_path / "agent-state"
    address = f"127.0.0.1:{free_port()}"
    cgroup = f"dockyard-policy-test-{uuid.uuid4().hex[:8]}"
    daemon = Daemon(
        "agent",
        [
            str(BIN / "dockyard-agent"),
            "run",
            "--runtime",
            "runc",
            "--insecure",
            "--controller",
            f"127.0.0.1:{free_port()}",
            "--state-dir",
            str(state),
            "--listen",
            address,
            "--name",
            "policy",
            "--cgroup-parent",
            cgroup,
        ],
        tmp_path / "agent.log",
    )
    try:
        daemon.start()
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield address, state
    finally:
        daemon.stop()
        daemon.kill()
        cleanup_everything(state / "runtime", cgroup)


def test_the_agents_own_api_refuses_privileged_containers_without_its_flag(
    plain_agent: tuple[str, Path],
) -> None:
    address, state = plain_agent

    def create(**fields: Any) -> Any:
        request = cpb.CreateContainerRequest(image="busybox", name="p", **fields)
        with grpc.insecure_channel(address) as channel:
            return refusal(
                lambda: containers_pb2_grpc.ContainersStub(channel).Create(request, timeout=20)
            )

    cases = [
        ({"privileged": True}, "privileged", "every capability"),
        ({"cap_add": ["CHOWN", "SYS_ADMIN"]}, "cap_add[1]", "SYS_ADMIN"),
        ({"network": "host"}, "network", "host"),
        ({"seccomp": "unconfined"}, "seccomp", "unconfined"),
        (
            {"volumes": [cpb.VolumeSpec(host_path="/", container_path="/h")]},
            "volumes[0].host_path",
            "holds",
        ),
        (
            {"volumes": [cpb.VolumeSpec(host_path=str(state / "containers"), container_path="/h")]},
            "volumes[0].host_path",
            f"inside {state}",
        ),
    ]
    for fields, field, reason in cases:
        denied = create(**fields)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED, (fields, denied.details())
        assert denied.details().startswith(f"{field}: "), denied.details()
        assert reason in denied.details() and "--allow-privileged" in denied.details()
    # a malformed request is still INVALID_ARGUMENT naming its field, policy or not
    bogus = create(cap_add=["BOGUS"])
    assert bogus.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bogus.details().startswith("cap_add[0]: ")
    assert not list((state / "containers").glob("*/*"))  # nothing was created


def test_a_bind_source_reaching_a_protected_path_through_a_symlink_is_refused(
    tmp_path: Path,
) -> None:
    """What a container could plant in a directory it may write (a bind-mounted one):
    a symlink that the node would follow when it mounts the next container's bind."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "to-etc").symlink_to("/etc")
    (shared / "to-root").symlink_to("/")
    (shared / "to-state").symlink_to(tmp_path / "agent-state")
    (shared / "data").mkdir()
    (shared / "to-data").symlink_to(shared / "data")
    for name in ("to-etc", "to-root", "to-state"):
        with pytest.raises(InvalidArgument) as refused:
            resolve_binds(
                [VolumeMount(shared / "ok", "/a"), VolumeMount(shared / name, "/b")],
                (str(tmp_path / "agent-state"),),
            )
        assert str(refused.value).startswith("volumes[1].host_path: "), str(refused.value)
        assert "through a symlink" in str(refused.value)
    # a harmless link is followed, and the runtime gets the path it leads to
    [mount] = resolve_binds([VolumeMount(shared / "to-data", "/d", True)])
    assert mount == VolumeMount(shared / "data", "/d", True)
    # a protected path named as such is the policy's to allow (here: allowed)
    assert resolve_binds([VolumeMount(Path("/etc"), "/e")]) == [VolumeMount(Path("/etc"), "/e")]


async def test_a_write_checked_against_a_policy_that_changed_meanwhile_fails(
    etcd: EtcdServer,
) -> None:
    """The fence: a spec checked while the policy allowed it cannot land after the policy
    was turned off (and the rollback targets it forbids were dropped)."""
    store = Store([etcd.endpoint], "/fence")
    await store.connect(5)
    try:
        await store.create(CLUSTER, CLUSTER_ID, ClusterRecordProto(id="c"))
        record = ClusterRecord(store)
        services = ServiceRegistry(store)
        allowing = await record.update(
            (await record.get()).meta.version, ClusterSpec(allow_privileged=True)
        )
        root = spec_of("root", change=cap("SYS_ADMIN"))
        checked = await record.check_spec(root)  # allowed, at this revision
        await record.update(allowing.meta.version, ClusterSpec(allow_privileged=False))
        with pytest.raises(Conflict):
            await services.create(root, [checked.fence(store)])
        assert await store.get_raw(SERVICE_NAMES, "root") is None  # nothing written
        with pytest.raises(PolicyDenied, match=r"^spec\.task\.container\.cap_add\[0\]: SYS_ADMIN"):
            await record.check_spec(root)
    finally:
        await store.close()
