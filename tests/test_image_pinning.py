"""Services pin their image tag to the digest the registry serves: a real controller,
hollow agents and a real docker-registry on loopback whose tag we move."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetServiceRequest,
    ListTasksRequest,
    ResolveImage,
    UpdateServiceRequest,
)
from dockyard.v1.workloads_pb2 import Service, ServiceSpec
from tests.conftest import Cluster
from tests.images.conftest import _start
from tests.ports import free_port

pytestmark = pytest.mark.registry

BUILD = [sys.executable, "-m", "dockyard.agent.images.build"]


@pytest.fixture(scope="module")
def registry_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for host, _root in _start(tmp_path_factory.mktemp("pin-registry")):
        yield host


def push(ref: str, kind: str = "busybox", *extra: str) -> str:
    """Build a test image, push it as `ref` and return its manifest digest."""
    done = subprocess.run(
        [*BUILD, kind, "--tag", ref, "--push", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    cluster = cluster_factory(resolve_image="always")
    cluster.start_controller()
    cluster.start_agent("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == "READY", "n1 READY")
    yield cluster


def spec(name: str, image: str, replicas: int = 2) -> ServiceSpec:
    result = ServiceSpec(name=name)
    result.task.container.image = image
    result.task.container.command.extend(["sleep", "3600"])
    result.replicated.replicas = replicas
    return result


def update(
    control: Any,
    name: str,
    change: Callable[[ServiceSpec], None],
    mode: int = 0,
    force: bool = False,
) -> Service:
    current = control.GetService(GetServiceRequest(service=name))
    new = ServiceSpec()
    new.CopyFrom(current.spec)
    change(new)
    return control.UpdateService(
        UpdateServiceRequest(
            service=name, version=current.meta.version, spec=new, force=force, resolve_image=mode
        )
    )  # type: ignore[arg-type]


def task_digests(control: Any, name: str) -> list[str]:
    return [t.image_digest for t in control.ListTasks(ListTasksRequest(services=[name])).tasks]


def test_a_pinned_service_keeps_its_bytes_when_the_tag_moves(
    cluster: Cluster, control: Any, registry_host: str
) -> None:
    ref = f"{registry_host}/pin/app:1"
    first = push(ref)
    created = control.CreateService(CreateServiceRequest(spec=spec("app", ref)))
    assert created.spec.task.container.image == f"{ref}@{first}"
    cluster.wait_for(lambda: task_digests(control, "app") == [first] * 2, "2 pinned tasks")

    second = push(ref, "busybox", "--compression", "none")  # the tag moves
    assert second != first
    scaled = update(control, "app", lambda s: setattr(s.replicated, "replicas", 3))
    assert scaled.spec.task.container.image == f"{ref}@{first}"  # scaling asks no registry
    cluster.wait_for(lambda: task_digests(control, "app") == [first] * 3, "3 tasks on the pin")

    def retag(new: ServiceSpec) -> None:
        new.task.container.image = ref

    kept = update(control, "app", retag, ResolveImage.CHANGED)
    assert kept.spec.task.container.image == f"{ref}@{first}"
    assert kept.spec_version == scaled.spec_version  # nothing changed: no rolling update
    moved = update(control, "app", retag, ResolveImage.ALWAYS)
    assert moved.spec.task.container.image == f"{ref}@{second}"
    cluster.wait_for(lambda: task_digests(control, "app") == [second] * 3, "the update rolled")

    third = push(ref, "whiteout")
    refreshed = update(control, "app", lambda s: None, ResolveImage.ALWAYS, force=True)
    assert refreshed.spec.task.container.image == f"{ref}@{third}"


def test_never_keeps_the_tag_and_a_digest_alone_is_kept(
    cluster: Cluster, control: Any, registry_host: str
) -> None:
    ref = f"{registry_host}/pin/never:1"
    digest = push(ref)
    kept = control.CreateService(
        CreateServiceRequest(spec=spec("never", ref), resolve_image=ResolveImage.NEVER)
    )
    assert kept.spec.task.container.image == ref
    cluster.wait_for(lambda: task_digests(control, "never") == ["", ""], "unpinned tasks")

    by_digest = f"{registry_host}/pin/never@{digest}"
    pinned = control.CreateService(CreateServiceRequest(spec=spec("bydigest", by_digest)))
    assert pinned.spec.task.container.image == by_digest
    cluster.wait_for(lambda: task_digests(control, "bydigest") == [digest] * 2, "pinned tasks")


def test_an_unreachable_registry_keeps_the_tag_and_warns(
    cluster: Cluster, control: Any, closed_port: int
) -> None:
    ref = f"127.0.0.1:{closed_port}/pin/gone:1"
    service, call = control.CreateService.with_call(CreateServiceRequest(spec=spec("gone", ref)))
    assert service.spec.task.container.image == ref
    warnings = [v for k, v in call.trailing_metadata() if k == "dockyard-warning"]
    assert len(warnings) == 1 and "could not be accessed on a registry" in warnings[0]
    assert ref.removeprefix("127.0.0.1:") in warnings[0]

    created = cluster.cli("service", "create", "-d", "--name", "gone2", ref)
    assert "WARNING: image " in created.stderr and "different versions" in created.stderr
    never = cluster.cli(
        "service", "create", "-d", "--name", "gone3", "--resolve-image", "never", ref
    )
    assert "WARNING" not in never.stderr


def test_a_bad_reference_is_refused_before_any_registry_is_asked(control: Any) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        control.CreateService(CreateServiceRequest(spec=spec("bad", "UPPER/Case:1")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("spec.task.container.image: ")
