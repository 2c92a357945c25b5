"""Unit tests of the Docker API's translation modules (no agent, no runc): pull progress
as dockerd streams it, image views and filters, X-Registry-Auth and filters decoding,
the event bus and Docker's event format, the user-defined network records."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from dockyard.agent.dockerapi import image_view
from dockyard.agent.dockerapi.errors import DockerApiError
from dockyard.agent.dockerapi.events import EventFilters, docker_event, parse_timestamp
from dockyard.agent.dockerapi.filters import parse_filters, registry_auth
from dockyard.agent.dockerapi.network_store import NetworkStore, NetworkStoreError
from dockyard.agent.dockerapi.pull_progress import (
    PullRenderer,
    PushRenderer,
    error_line,
    progress_bar,
    pull_footer,
    pull_header,
    push_footer,
)
from dockyard.agent.events import Event, EventBus
from dockyard.agent.images.models import Image, ImageConfig, Layer
from dockyard.agent.images.progress import ProgressEvent, Status
from dockyard.agent.images.reference import parse_reference
from dockyard.common.distribution.platform import Platform

LAYER = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32
MANIFEST = "sha256:" + "ef" * 32


def _image(*refs: str, labels: dict[str, str] | None = None) -> Image:
    return Image(
        digest=MANIFEST,
        config_digest=CONFIG,
        media_type="application/vnd.oci.image.manifest.v1+json",
        layers=(Layer(LAYER, 1000, "application/vnd.oci.image.layer.v1.tar+gzip", LAYER),),
        config=ImageConfig(cmd=["sh"], labels=labels or {}),
        created="2024-01-02T03:04:05Z",
        platform=Platform(os="linux", architecture="amd64"),
        references=refs,
    )


# ----- pull progress ---------------------------------------------------------------------


def test_a_pull_renders_dockerds_messages_per_layer() -> None:
    renderer = PullRenderer()
    events = [
        ProgressEvent(LAYER, Status.WAITING, 0, 1000),
        ProgressEvent(LAYER, Status.DOWNLOADING, 500, 1000),
        ProgressEvent(LAYER, Status.VERIFYING, 1000, 1000),
        ProgressEvent(LAYER, Status.EXTRACTING, 1000, 1000),
        ProgressEvent(LAYER, Status.DONE, 1000, 1000),
    ]
    messages = [m for e in events for m in renderer.render(e)]
    assert [m["status"] for m in messages] == [
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
    ]
    assert {m["id"] for m in messages} == {"abababababab"}
    assert messages[1]["progressDetail"] == {"current": 500, "total": 1000}
    assert messages[1]["progress"].startswith("[=========================>")
    assert messages[0]["progressDetail"] == {}


def test_a_layer_already_there_says_so() -> None:
    [message] = PullRenderer().render(ProgressEvent(LAYER, Status.ALREADY_EXISTS, 1, 1))
    assert message == {"status": "Already exists", "progressDetail": {}, "id": "abababababab"}


def test_push_messages_and_footer() -> None:
    renderer = PushRenderer()
    statuses = [
        renderer.render(ProgressEvent(LAYER, s, 1, 2))[0]["status"]
        for s in (Status.WAITING, Status.UPLOADING, Status.PUSHED, Status.ALREADY_EXISTS)
    ]
    assert statuses == ["Preparing", "Pushing", "Pushed", "Layer already exists"]
    ref = parse_reference("localhost:5000/app:v1")
    status, aux = push_footer(ref, MANIFEST, 527)
    assert status == {"status": f"v1: digest: {MANIFEST} size: 527"}
    assert aux["aux"] == {"Tag": "v1", "Digest": MANIFEST, "Size": 527}


def test_header_footer_and_error_lines() -> None:
    ref = parse_reference("busybox")
    assert pull_header(ref) == {"status": "Pulling from library/busybox", "id": "latest"}
    image = _image("docker.io/library/busybox:latest")
    new = pull_footer(ref, image, None)
    assert new[-1]["status"] == "Status: Downloaded newer image for busybox:latest"
    same = pull_footer(ref, image, MANIFEST)
    assert same[-1]["status"] == "Status: Image is up to date for busybox:latest"
    line = json.loads(error_line("manifest unknown"))
    assert line == {"errorDetail": {"message": "manifest unknown"}, "error": "manifest unknown"}


def test_progress_bar_is_dockers() -> None:
    assert progress_bar(0, 1000).startswith("[>" + " " * 50 + "]")
    assert progress_bar(1000, 1000).startswith("[" + "=" * 50 + ">]")
    assert progress_bar(1_500_000, 3_000_000).endswith("1.5MB/3MB")


# ----- image views -----------------------------------------------------------------------


def test_summary_names_the_image_as_docker() -> None:
    image = _image(
        "docker.io/library/busybox:latest",
        "docker.io/library/busybox:1",
        "localhost:5000/app:v1",
    )
    row = image_view.summary(image)
    assert row["Id"] == CONFIG
    assert row["RepoTags"] == ["busybox:1", "busybox:latest", "localhost:5000/app:v1"]
    assert row["RepoDigests"] == [f"busybox@{MANIFEST}", f"localhost:5000/app@{MANIFEST}"]
    assert row["Created"] == 1704164645


def test_inspect_and_history_read_the_config() -> None:
    config = {
        "architecture": "amd64",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "history": [
            {"created": "2024-01-02T03:04:05Z", "created_by": "ADD rootfs"},
            {"created": "2024-01-02T03:04:06Z", "created_by": "CMD sh", "empty_layer": True},
        ],
    }
    image = _image("docker.io/library/busybox:latest")
    body = image_view.inspect(image, json.dumps(config).encode())
    assert body["Config"]["Cmd"] == ["sh"] and body["Config"]["Entrypoint"] is None
    assert body["RootFS"] == {"Type": "layers", "Layers": [LAYER]}
    history = image_view.history(image, json.dumps(config).encode())
    assert [h["CreatedBy"] for h in history] == ["CMD sh", "ADD rootfs"]
    assert [h["Size"] for h in history] == [0, 1000]
    assert history[0]["Id"] == CONFIG and history[1]["Id"] == "<missing>"
    assert history[0]["Tags"] == ["busybox:latest"]


def test_filters_match_references_dangling_and_labels() -> None:
    tagged = _image("docker.io/library/busybox:latest", labels={"team": "a"})
    dangling = _image()
    by = image_view.ImageFilters
    assert by({"reference": ["busybox"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert by({"reference": ["busybox:latest"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert by({"reference": ["busy*"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert by({"reference": ["docker.io/library/busybox"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert not by({"reference": ["busybox:1"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert not by({"reference": ["other"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert by({"dangling": ["true"]}).matches(dangling, None)  # type: ignore[arg-type]
    assert not by({"dangling": ["true"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert by({"label": ["team=a"]}).matches(tagged, None)  # type: ignore[arg-type]
    assert not by({"label": ["team=b"]}).matches(tagged, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid filter 'colour'"):
        by({"colour": ["red"]})


def test_find_image_takes_short_ids(tmp_path: Path) -> None:
    from dockyard.agent.images.image_store import ImageStore

    class Store(ImageStore):
        def images(self) -> list[Image]:
            return [_image("docker.io/library/busybox:latest")]

    store = Store(tmp_path / "images")
    assert image_view.find_image(store, "cdcdcd").id == CONFIG
    assert image_view.find_image(store, "sha256:cdcd").id == CONFIG
    from dockyard.agent.images.errors import ImageNotFound

    with pytest.raises(ImageNotFound):
        image_view.find_image(store, "abab")


# ----- query and header decoding -----------------------------------------------------------


def test_filters_in_both_forms() -> None:
    assert parse_filters('{"dangling":["true"]}') == {"dangling": ["true"]}
    assert parse_filters('{"label":{"a=b":true,"c":false}}') == {"label": ["a=b"]}
    assert parse_filters(None) == {}
    for bad in ("{", "[]", '{"a": 1}', '{"a": [1]}'):
        with pytest.raises(DockerApiError) as caught:
            parse_filters(bad)
        assert caught.value.status == 400


def test_registry_auth_header() -> None:
    raw = json.dumps({"username": "u", "password": "p", "serveraddress": "r"}).encode()
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    credentials = registry_auth(encoded)
    assert credentials is not None
    assert (credentials.username, credentials.password) == ("u", "p")
    assert registry_auth("") is None
    assert registry_auth(base64.urlsafe_b64encode(b"{}").decode()) is None
    with pytest.raises(DockerApiError) as caught:
        registry_auth("!!!not base64 json!!!")
    assert caught.value.status == 400


# ----- events -----------------------------------------------------------------------------


async def test_a_slow_subscriber_drops_instead_of_growing() -> None:
    bus = EventBus(history=3, queue_size=2)
    slow = bus.subscribe()
    for index in range(5):
        bus.publish("volume", "create", f"v{index}")
    assert slow.dropped == 3
    assert [(await slow.get()).actor_id for _ in range(2)] == ["v0", "v1"]
    assert [e.actor_id for e in bus.past(0)] == ["v2", "v3", "v4"]
    slow.close()
    assert bus.subscribers == 0
    bus.publish("volume", "create", "later")  # nobody listens: nothing queued anywhere
    await asyncio.sleep(0)


def test_docker_event_format_and_filters() -> None:
    event = Event(
        "container", "die", "c" * 64, {"name": "web", "image": "busybox"}, 1_700_000_000_123_456_789
    )
    body = docker_event(event)
    assert body["Type"] == "container" and body["Action"] == "die"
    assert body["Actor"] == {"ID": "c" * 64, "Attributes": {"name": "web", "image": "busybox"}}
    assert body["time"] == 1_700_000_000 and body["timeNano"] == 1_700_000_000_123_456_789
    assert body["status"] == "die" and body["from"] == "busybox"
    assert EventFilters({"type": ["container"], "event": ["die"]}).matches(event)
    assert EventFilters({"container": ["web"]}).matches(event)
    assert EventFilters({"image": ["busybox"]}).matches(event)
    assert not EventFilters({"type": ["image"]}).matches(event)
    assert not EventFilters({"volume": ["x"]}).matches(event)
    with pytest.raises(DockerApiError):
        EventFilters({"colour": ["red"]})


def test_timestamps_as_the_cli_sends_them() -> None:
    assert parse_timestamp("1700000000") == 1_700_000_000_000_000_000
    assert parse_timestamp("1700000000.5") == 1_700_000_000_500_000_000
    assert parse_timestamp("10m", now=1000.0) == 400_000_000_000
    assert parse_timestamp("1h30m", now=10_000.0) == 4_600_000_000_000
    with pytest.raises(DockerApiError):
        parse_timestamp("yesterday")


# ----- network records ----------------------------------------------------------------------


def test_network_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dockerapi" / "networks.json"
    store = NetworkStore(path)
    record = store.create("proj_default", labels={"com.docker.compose.project": "proj"})
    store.connect("c1", record.id, ["web"])
    with pytest.raises(NetworkStoreError, match="already exists"):
        store.create("proj_default")
    with pytest.raises(NetworkStoreError, match="already exists"):
        store.create("bridge")
    with pytest.raises(NetworkStoreError, match="invalid network name"):
        store.create("bad name")
    with pytest.raises(NetworkStoreError, match="invalid network name"):
        store.connect("c1", record.id, ["no spaces please"])
    again = NetworkStore(path)
    assert again.find("proj_default") == record
    assert again.find(record.id[:12]) == record
    assert [(r.name, e.aliases) for r, e in again.of("c1")] == [("proj_default", ["web"])]
    assert again.users(record.id) == ["c1"]
    again.forget_container("c1")
    assert again.users(record.id) == []
    again.remove(record)
    assert NetworkStore(path).find("proj_default") is None
