"""Debian's docker CLI (client only) against a runc agent's Docker API: pull with streamed
progress, images, inspect, tag, rm, history, save | load, and volumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dockerapi.conftest import DockerAgent

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def _images(agent: DockerAgent, *args: str) -> list[dict[str, str]]:
    out = agent.docker("images", "--format", "{{json .}}", *args).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pulled(docker_agent: DockerAgent) -> str:
    done = docker_agent.docker("pull", docker_agent.busybox)
    return done.stdout.decode()


def test_pull_streams_dockerd_progress(docker_agent: DockerAgent, pulled: str) -> None:
    assert "Pulling from test/busybox" in pulled
    assert "Pull complete" in pulled
    assert "Digest: sha256:" in pulled
    assert f"Status: Downloaded newer image for {docker_agent.busybox}" in pulled
    again = docker_agent.docker("pull", docker_agent.busybox).stdout.decode()
    assert f"Status: Image is up to date for {docker_agent.busybox}" in again


def test_pull_of_a_missing_image_is_an_error(docker_agent: DockerAgent) -> None:
    registry = docker_agent.busybox.split("/", 1)[0]
    done = docker_agent.docker("pull", f"{registry}/test/nothing-here:1", check=False)
    assert done.returncode != 0
    assert b"not found" in done.stderr


def test_images_lists_and_matches_names(docker_agent: DockerAgent, pulled: str) -> None:
    repository = docker_agent.busybox.rsplit(":", 1)[0]
    rows = _images(docker_agent)
    assert any(r["Repository"] == repository and r["Tag"] == "latest" for r in rows)
    assert [r["Repository"] for r in _images(docker_agent, repository)] == [repository]
    assert [r["Tag"] for r in _images(docker_agent, f"{repository}:latest")] == ["latest"]
    assert _images(docker_agent, f"{repository}:nope") == []
    image_id = docker_agent.docker("images", "-q", repository).stdout.decode().strip()
    assert len(image_id) == 12
    assert _images(docker_agent, "--filter", "dangling=true") == []


def test_inspect_tag_history_and_rm(docker_agent: DockerAgent, pulled: str) -> None:
    [image] = docker_agent.docker_json("image", "inspect", docker_agent.busybox)
    assert image["Id"].startswith("sha256:")
    assert docker_agent.busybox in image["RepoTags"]
    assert image["RepoDigests"][0].startswith(docker_agent.busybox.rsplit(":", 1)[0] + "@sha256:")
    assert image["RootFS"]["Type"] == "layers" and image["RootFS"]["Layers"]
    assert image["Os"] == "linux" and image["Architecture"]
    # By short id, as docker resolves it.
    [again] = docker_agent.docker_json("image", "inspect", image["Id"][7:15])
    assert again["Id"] == image["Id"]

    docker_agent.docker("tag", docker_agent.busybox, "dockyard-test/copy:v1")
    [tagged] = docker_agent.docker_json("image", "inspect", "dockyard-test/copy:v1")
    assert tagged["Id"] == image["Id"]
    history = docker_agent.docker("history", "--no-trunc", "dockyard-test/copy:v1").stdout
    assert image["Id"].encode() in history

    removed = docker_agent.docker("rmi", "dockyard-test/copy:v1").stdout.decode()
    assert "Untagged: dockyard-test/copy:v1" in removed
    missing = docker_agent.docker("image", "inspect", "dockyard-test/copy:v1", check=False)
    assert missing.returncode != 0 and b"No such image" in missing.stderr
    docker_agent.docker("image", "inspect", docker_agent.busybox)  # the other tag stays


def test_save_and_load_round_trip(docker_agent: DockerAgent, pulled: str, tmp_path: Path) -> None:
    docker_agent.docker("tag", docker_agent.busybox, "dockyard-test/saved:v2")
    archive = tmp_path / "saved.tar"
    docker_agent.docker("save", "-o", str(archive), "dockyard-test/saved:v2")
    assert archive.stat().st_size > 0
    docker_agent.docker("rmi", "dockyard-test/saved:v2")
    loaded = docker_agent.docker("load", "-i", str(archive)).stdout.decode()
    assert "Loaded image: dockyard-test/saved:v2" in loaded
    [image] = docker_agent.docker_json("image", "inspect", "dockyard-test/saved:v2")
    assert image["RepoTags"]
    docker_agent.docker("rmi", "dockyard-test/saved:v2")


def test_load_refuses_what_is_no_image_archive(docker_agent: DockerAgent, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tarball" * 100)
    done = docker_agent.docker("load", "-i", str(junk), check=False)
    assert done.returncode != 0
    assert b"archive" in done.stderr


def test_volume_create_ls_inspect_rm(docker_agent: DockerAgent) -> None:
    docker_agent.docker("volume", "create", "--label", "purpose=test", "dockyard-vol")
    names = docker_agent.docker("volume", "ls", "-q").stdout.decode().split()
    assert "dockyard-vol" in names
    [volume] = docker_agent.docker_json("volume", "inspect", "dockyard-vol")
    assert volume["Driver"] == "local" and volume["Labels"] == {"purpose": "test"}
    assert Path(volume["Mountpoint"]).is_dir()
    filtered = docker_agent.docker("volume", "ls", "-q", "--filter", "label=purpose=test")
    assert filtered.stdout.decode().split() == ["dockyard-vol"]
    docker_agent.docker("volume", "rm", "dockyard-vol")
    missing = docker_agent.docker("volume", "inspect", "dockyard-vol", check=False)
    assert missing.returncode != 0 and b"no such volume" in missing.stderr.lower()


def test_network_ls_inspect_create_rm(docker_agent: DockerAgent) -> None:
    names = docker_agent.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
    rows = names.decode().splitlines()
    assert {"bridge bridge", "host host", "none null"} <= set(rows)
    [bridge] = docker_agent.docker_json("network", "inspect", "bridge")
    assert bridge["IPAM"]["Config"][0]["Subnet"] == docker_agent.subnet
    docker_agent.docker("network", "create", "--label", "app=test", "dockyard-net")
    [made] = docker_agent.docker_json("network", "inspect", "dockyard-net")
    assert made["Driver"] == "bridge" and made["Labels"] == {"app": "test"}
    [by_id] = docker_agent.docker_json("network", "inspect", made["Id"][:12])
    assert by_id["Name"] == "dockyard-net"
    again = docker_agent.docker("network", "create", "dockyard-net", check=False)
    assert again.returncode != 0 and b"already exists" in again.stderr
    refused = docker_agent.docker("network", "rm", "bridge", check=False)
    assert refused.returncode != 0 and b"pre-defined" in refused.stderr
    docker_agent.docker("network", "rm", "dockyard-net")
    assert b"dockyard-net" not in docker_agent.docker("network", "ls").stdout


def test_system_df(docker_agent: DockerAgent, pulled: str) -> None:
    out = docker_agent.docker("system", "df").stdout.decode()
    assert out.splitlines()[0].split()[:2] == ["TYPE", "TOTAL"]
    assert "Images" in out and "Local Volumes" in out
    verbose = docker_agent.docker("system", "df", "-v").stdout.decode()
    assert docker_agent.busybox.rsplit(":", 1)[0] in verbose
