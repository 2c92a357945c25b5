"""The agent's Images API, and images in use by containers."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import images_pb2 as ipb
from tests.agent.conftest import Agent, ImageRegistry
from tests.agent.test_agent_containers import code_of
from tests.ports import free_port

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def test_pull_progress(agent_factory, image_registry: ImageRegistry) -> None:
    agent: Agent = agent_factory().start()
    events = agent.pull(image_registry.busybox)
    statuses = [e.status for e in events]
    assert "downloading" in statuses or "extracting" in statuses, statuses
    assert statuses.count("done") >= 2  # the layer, and the final message
    final = events[-1]
    assert final.done and final.id == image_registry.busybox
    assert final.image.digest == image_registry.digest
    repo_digest = image_registry.busybox.rsplit(":", 1)[0] + "@" + image_registry.digest
    assert final.image.references == [image_registry.busybox, repo_digest]  # docker's RepoDigests
    assert json.loads(final.image.config_json)["config"]["Cmd"] == ["sh"]
    assert all(not e.done for e in events[:-1])
    again = agent.pull(image_registry.busybox)
    assert again[-1].done and any(e.status == "already exists" for e in again[:-1])
    listed = agent.images.List(ipb.ListImagesRequest()).images
    assert [(i.repository, i.tag) for i in listed] == [
        (image_registry.busybox.rsplit(":", 1)[0], "latest")
    ]
    inspected = agent.images.Inspect(ipb.ImageRef(image=image_registry.digest))
    assert inspected.layers == final.image.layers


def test_pull_errors(agent: Agent, image_registry: ImageRegistry) -> None:
    code, message = code_of(lambda: agent.pull(f"{image_registry.server.host}/none/such:1"))
    assert code == grpc.StatusCode.NOT_FOUND, message
    code, message = code_of(lambda: agent.pull(f"127.0.0.1:{free_port()}/x:1"))
    assert code == grpc.StatusCode.UNAVAILABLE, message
    code, message = code_of(lambda: agent.pull("Bad Ref"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("image:")
    code, _ = code_of(lambda: agent.images.Inspect(ipb.ImageRef(image="nothing:here")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_image_rm_refused_while_in_use(agent: Agent, image_registry: ImageRegistry) -> None:
    ref = image_registry.busybox
    record = agent.containers.Create(
        cpb.CreateContainerRequest(image=ref, name="user1", command=["true"])
    )
    code, message = code_of(lambda: agent.images.Remove(ipb.RemoveImageRequest(image=ref)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"image {ref} is used by container {record.id[:12]} (user1)" in message
    # another tag can go: the image stays
    agent.images.Tag(ipb.TagImageRequest(source=ref, target="other:tag"))
    removed = agent.images.Remove(ipb.RemoveImageRequest(image="other:tag"))
    assert list(removed.untagged) == ["other:tag"] and not removed.deleted
    # forced: the image goes, the container keeps its layers and still runs
    removed = agent.images.Remove(ipb.RemoveImageRequest(image=ref, force=True))
    assert list(removed.deleted) == [image_registry.digest]
    agent.containers.Start(cpb.ContainerRef(container="user1"))
    assert agent.containers.Wait(cpb.ContainerRef(container="user1")).exit_code == 0
    agent.containers.Remove(cpb.RemoveContainerRequest(container="user1"))


def test_save_load_tag(agent: Agent, image_registry: ImageRegistry, tmp_path: Path) -> None:
    out = tmp_path / "saved.tar"
    saved = agent.images.Save(ipb.SaveImagesRequest(images=[image_registry.busybox], path=str(out)))
    assert saved.size == out.stat().st_size > 0
    code, message = code_of(lambda: agent.images.Load(ipb.LoadImagesRequest(path="rel.tar")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("path:")
    agent.images.Remove(ipb.RemoveImageRequest(image=image_registry.busybox))
    assert not agent.images.List(ipb.ListImagesRequest()).images
    loaded = agent.images.Load(ipb.LoadImagesRequest(path=str(out)))
    assert [i.digest for i in loaded.images] == [image_registry.digest]


def test_registry_mirror_flag(agent_factory, image_registry: ImageRegistry) -> None:
    """`--registry-mirror` serves docker.io pulls (the test image as `test/busybox`)."""
    mirror = f"http://{image_registry.server.host}"
    agent: Agent = agent_factory(extra=["--registry-mirror", mirror]).start()
    events = agent.pull("test/busybox")
    assert events[-1].done and events[-1].image.digest == image_registry.digest
    image = events[-1].image
    assert list(image.references) == [
        "docker.io/test/busybox:latest",
        f"docker.io/test/busybox@{image.digest}",
    ]
    record, code = agent.run("test/busybox", "true")
    assert code == 0 and record.image == "test/busybox"
