"""Docker's Python SDK and testcontainers-python against a runc agent's Docker API:
images.pull with a progress stream, images.list, volumes; `docker events` while a
container starts; testcontainers starting a container and waiting for its log line."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.conftest import ImageRegistry
from tests.dockerapi.conftest import DOCKER, DockerAgent

pytestmark = [pytest.mark.runc, pytest.mark.registry]


@pytest.fixture(scope="module")
def client(docker_agent: DockerAgent) -> Iterator[Any]:
    sdk = docker_agent.client()
    try:
        yield sdk
    finally:
        sdk.close()


def test_sdk_pull_stream_and_list(client: Any, image_registry: ImageRegistry) -> None:
    repository, tag = image_registry.busybox.rsplit(":", 1)
    client.images.remove(image_registry.busybox)  # the fixture pulled it through gRPC
    lines = list(client.api.pull(repository, tag=tag, stream=True, decode=True))
    statuses = [line.get("status", "") for line in lines]
    assert any(s.startswith("Pulling from") for s in statuses)
    assert any(s in ("Pull complete", "Already exists") for s in statuses)
    assert statuses[-1].startswith("Status: ")
    assert not [line for line in lines if "error" in line]
    image = client.images.get(image_registry.busybox)
    assert image.id.startswith("sha256:")
    assert image_registry.busybox in image.tags
    listed = client.images.list(name=repository)
    assert [i.id for i in listed] == [image.id]
    assert image.id in {i.id for i in client.images.list()}


def test_sdk_pull_error_names_the_image(client: Any, image_registry: ImageRegistry) -> None:
    import docker.errors

    registry = image_registry.busybox.split("/", 1)[0]
    with pytest.raises(docker.errors.NotFound):
        client.images.pull(f"{registry}/test/absent", tag="1")


def test_sdk_volumes(client: Any) -> None:
    volume = client.volumes.create("sdk-volume", labels={"made-by": "sdk"})
    assert volume.attrs["Mountpoint"]
    assert "sdk-volume" in [v.name for v in client.volumes.list()]
    assert client.volumes.get("sdk-volume").attrs["Labels"] == {"made-by": "sdk"}
    volume.remove()
    assert "sdk-volume" not in [v.name for v in client.volumes.list()]


def test_events_while_a_container_runs(docker_agent: DockerAgent) -> None:
    since = str(int(time.time()) - 1)
    events = subprocess.Popen(
        [DOCKER, "-H", docker_agent.host, "events", "--since", since, "--format", "{{json .}}"],
        env=docker_agent.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert events.stdout is not None
        for line in events.stdout:
            seen.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        docker_agent.ok("run", "-d", "--name", "evented", "busybox:latest", "true")
        assert docker_agent.ok("wait", "evented").strip() == "0"
        docker_agent.ok("rm", "evented")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            actions = [e["Action"] for e in seen if e.get("Type") == "container"]
            if "destroy" in actions:
                break
            time.sleep(0.1)
    finally:
        events.terminate()
        events.wait(10)
        reader.join(10)
        assert events.stdout is not None
        events.stdout.close()
    mine = [
        e
        for e in seen
        if e["Type"] == "container" and e["Actor"]["Attributes"]["name"] == "evented"
    ]
    actions = [e["Action"] for e in mine]
    assert actions[:2] == ["create", "start"], actions
    assert "die" in actions and actions[-1] == "destroy", actions
    died = next(e for e in mine if e["Action"] == "die")
    assert died["Actor"]["Attributes"]["exitCode"] == "0"
    assert died["timeNano"] // 1_000_000_000 == died["time"]


def test_events_until_ends_the_stream(docker_agent: DockerAgent) -> None:
    docker_agent.ok("volume", "create", "evented-volume")
    docker_agent.ok("volume", "rm", "evented-volume")
    now = int(time.time()) + 1
    out = docker_agent.ok(
        "events",
        "--since",
        str(now - 30),
        "--until",
        str(now),
        "--filter",
        "type=volume",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.ID}}",
    )
    assert "volume create evented-volume" in out
    assert "volume destroy evented-volume" in out
    assert "container" not in out


def test_testcontainers_waits_for_a_log_line(
    docker_agent: DockerAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    monkeypatch.setenv("DOCKER_HOST", docker_agent.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_agent.docker_config))
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    # wait_for_logs's successor: testcontainers 4 deprecates the function for this.
    container = (
        DockerContainer("busybox:latest")
        .with_command(["sh", "-c", "echo dockyard-is-ready; sleep 30"])
        .waiting_for(LogMessageWaitStrategy("dockyard-is-ready").with_startup_timeout(30))
    )
    with container:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        assert wrapped.status == "running"
        assert b"dockyard-is-ready" in wrapped.logs()
    assert not docker_agent.ok("ps", "-aq", "--filter", f"id={wrapped.id}").strip()
