"""Debian's docker CLI (client only) against a runc agent's Docker API: pull with streamed
progress, images, inspect, tag, rm, history, save | load, and volumes."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import BUILD, ImageRegistry
from tests.dockerapi.conftest import DockerAgent as ApiAgent
from tests.images.conftest import RegistryServer, auth_registry

__all__ = ["auth_registry"]  # the fixture, for this module's tests

pytestmark = [pytest.mark.runc, pytest.mark.registry]


@dataclass
class DockerAgent:
    """The module's agent, and a busybox copy of our own in the registry to pull."""

    api: ApiAgent
    busybox: str
    subnet: str

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            ["/usr/bin/docker", "-H", self.api.host, *args],
            capture_output=True,
            env=self.api.env(),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')}\n{done.stderr.decode(errors='replace')}"
                f"\nagent log:\n{self.api.agent.log()}"
            )
        return done

    def docker_json(self, *args: str) -> Any:
        return json.loads(self.docker(*args).stdout)


@pytest.fixture(scope="module")
def agent(docker_agent: ApiAgent, image_registry: ImageRegistry) -> DockerAgent:
    """An image of random layers in the registry (none of them in the agent's store: a
    pull downloads them), and the busybox the agent has pushed with `docker push`."""
    registry = image_registry.busybox.split("/", 1)[0]
    own = f"{registry}/dockerapi-images/random-{uuid.uuid4().hex[:8]}:latest"
    built = subprocess.run(
        [*BUILD, "big", "--layers", "2", "--layer-size", "300K", "--tag", own, "--push"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    under_test = DockerAgent(docker_agent, own, docker_agent.subnet)
    copy = f"{registry}/dockerapi-images/busybox-copy:v1"
    under_test.docker("tag", "busybox:latest", copy)
    pushed = under_test.docker("push", copy).stdout.decode()
    assert "v1: digest: sha256:" in pushed, pushed
    assert "Pushed" in pushed or "Layer already exists" in pushed, pushed
    return under_test


def _images(agent: DockerAgent, *args: str) -> list[dict[str, str]]:
    out = agent.docker("images", "--format", "{{json .}}", *args).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pulled(agent: DockerAgent) -> str:
    done = agent.docker("pull", agent.busybox)
    return done.stdout.decode()


def test_pull_streams_dockerd_progress(agent: DockerAgent, pulled: str) -> None:
    repository = agent.busybox.split("/", 1)[1].rsplit(":", 1)[0]
    assert f"Pulling from {repository}" in pulled
    assert "Pull complete" in pulled
    assert "Digest: sha256:" in pulled
    assert f"Status: Downloaded newer image for {agent.busybox}" in pulled
    again = agent.docker("pull", agent.busybox).stdout.decode()
    assert f"Status: Image is up to date for {agent.busybox}" in again


def test_pull_of_a_missing_image_is_an_error(agent: DockerAgent) -> None:
    registry = agent.busybox.split("/", 1)[0]
    done = agent.docker("pull", f"{registry}/test/nothing-here:1", check=False)
    assert done.returncode != 0
    assert b"not found" in done.stderr


def test_images_lists_and_matches_names(agent: DockerAgent, pulled: str) -> None:
    repository = agent.busybox.rsplit(":", 1)[0]
    rows = _images(agent)
    assert any(r["Repository"] == repository and r["Tag"] == "latest" for r in rows)
    assert [r["Repository"] for r in _images(agent, repository)] == [repository]
    assert [r["Tag"] for r in _images(agent, f"{repository}:latest")] == ["latest"]
    assert _images(agent, f"{repository}:nope") == []
    image_id = agent.docker("images", "-q", repository).stdout.decode().strip()
    assert len(image_id) == 12
    assert _images(agent, "--filter", "dangling=true") == []


def test_inspect_tag_history_and_rm(agent: DockerAgent, pulled: str) -> None:
    [image] = agent.docker_json("image", "inspect", agent.busybox)
    assert image["Id"].startswith("sha256:")
    assert agent.busybox in image["RepoTags"]
    assert image["RepoDigests"][0].startswith(agent.busybox.rsplit(":", 1)[0] + "@sha256:")
    assert image["RootFS"]["Type"] == "layers" and image["RootFS"]["Layers"]
    assert image["Os"] == "linux" and image["Architecture"]
    # By short id, as docker resolves it.
    [again] = agent.docker_json("image", "inspect", image["Id"][7:15])
    assert again["Id"] == image["Id"]

    agent.docker("tag", agent.busybox, "dockyard-test/copy:v1")
    [tagged] = agent.docker_json("image", "inspect", "dockyard-test/copy:v1")
    assert tagged["Id"] == image["Id"]
    history = agent.docker("history", "--no-trunc", "dockyard-test/copy:v1").stdout
    assert image["Id"].encode() in history

    removed = agent.docker("rmi", "dockyard-test/copy:v1").stdout.decode()
    assert "Untagged: dockyard-test/copy:v1" in removed
    missing = agent.docker("image", "inspect", "dockyard-test/copy:v1", check=False)
    assert missing.returncode != 0 and b"No such image" in missing.stderr
    agent.docker("image", "inspect", agent.busybox)  # the other tag stays


def test_save_and_load_round_trip(agent: DockerAgent, pulled: str, tmp_path: Path) -> None:
    agent.docker("tag", agent.busybox, "dockyard-test/saved:v2")
    archive = tmp_path / "saved.tar"
    agent.docker("save", "-o", str(archive), "dockyard-test/saved:v2")
    assert archive.stat().st_size > 0
    agent.docker("rmi", "dockyard-test/saved:v2")
    loaded = agent.docker("load", "-i", str(archive)).stdout.decode()
    assert "Loaded image: dockyard-test/saved:v2" in loaded
    [image] = agent.docker_json("image", "inspect", "dockyard-test/saved:v2")
    assert image["RepoTags"]
    agent.docker("rmi", "dockyard-test/saved:v2")


def test_load_refuses_what_is_no_image_archive(agent: DockerAgent, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is no tarball" * 100)
    done = agent.docker("load", "-i", str(junk), check=False)
    assert done.returncode != 0
    assert b"archive" in done.stderr


def test_volume_create_ls_inspect_rm(agent: DockerAgent) -> None:
    agent.docker("volume", "create", "--label", "purpose=test", "dockyard-vol")
    names = agent.docker("volume", "ls", "-q").stdout.decode().split()
    assert "dockyard-vol" in names
    [volume] = agent.docker_json("volume", "inspect", "dockyard-vol")
    assert volume["Driver"] == "local" and volume["Labels"] == {"purpose": "test"}
    assert Path(volume["Mountpoint"]).is_dir()
    filtered = agent.docker("volume", "ls", "-q", "--filter", "label=purpose=test")
    assert filtered.stdout.decode().split() == ["dockyard-vol"]
    agent.docker("volume", "rm", "dockyard-vol")
    missing = agent.docker("volume", "inspect", "dockyard-vol", check=False)
    assert missing.returncode != 0 and b"no such volume" in missing.stderr.lower()


def test_network_ls_inspect_create_rm(agent: DockerAgent) -> None:
    names = agent.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
    rows = names.decode().splitlines()
    assert {"bridge bridge", "host host", "none null"} <= set(rows)
    [bridge] = agent.docker_json("network", "inspect", "bridge")
    assert bridge["IPAM"]["Config"][0]["Subnet"] == agent.subnet
    agent.docker("network", "create", "--label", "app=test", "dockyard-net")
    [made] = agent.docker_json("network", "inspect", "dockyard-net")
    assert made["Driver"] == "bridge" and made["Labels"] == {"app": "test"}
    [by_id] = agent.docker_json("network", "inspect", made["Id"][:12])
    assert by_id["Name"] == "dockyard-net"
    again = agent.docker("network", "create", "dockyard-net", check=False)
    assert again.returncode != 0 and b"already exists" in again.stderr
    refused = agent.docker("network", "rm", "bridge", check=False)
    assert refused.returncode != 0 and b"pre-defined" in refused.stderr
    agent.docker("network", "rm", "dockyard-net")
    assert b"dockyard-net" not in agent.docker("network", "ls").stdout


def test_user_network_names_resolve_and_connect(agent: DockerAgent) -> None:
    """A container on a user-defined network answers to its name and aliases through
    the agent's DNS; connect and disconnect change its aliases."""
    agent.docker("network", "create", "dockyard-dns")
    try:
        agent.docker(
            "run",
            "-d",
            "--name",
            "named",
            "--network",
            "dockyard-dns",
            "--network-alias",
            "first",
            "busybox:latest",
            "sleep",
            "60",
        )
        [net] = agent.docker_json("network", "inspect", "dockyard-dns")
        [(_cid, member)] = net["Containers"].items()
        assert member["Name"] == "named" and member["IPv4Address"]
        address = member["IPv4Address"].split("/")[0]
        [inspected] = agent.docker_json("inspect", "named")
        assert inspected["NetworkSettings"]["Networks"]["dockyard-dns"]["Aliases"] == ["first"]
        agent.docker("network", "disconnect", "dockyard-dns", "named")
        agent.docker("network", "connect", "--alias", "second", "dockyard-dns", "named")
        script = "for n in named second first; do nslookup $n || echo MISSING $n; done"
        agent.docker(
            "run",
            "-d",
            "--name",
            "asker",
            "--network",
            "dockyard-dns",
            "busybox:latest",
            "sh",
            "-c",
            script,
        )
        agent.docker("wait", "asker")
        answers = agent.docker("logs", "asker").stdout.decode()
        assert answers.count(address) == 2, answers
        assert "MISSING first" in answers, answers
        busy = agent.docker("network", "rm", "dockyard-dns", check=False)
        assert busy.returncode != 0 and b"active endpoints" in busy.stderr
    finally:
        agent.docker("rm", "-f", "named", "asker", check=False)
    agent.docker("network", "rm", "dockyard-dns")


def test_system_df(agent: DockerAgent, pulled: str) -> None:
    out = agent.docker("system", "df").stdout.decode()
    assert out.splitlines()[0].split()[:2] == ["TYPE", "TOTAL"]
    assert "Images" in out and "Local Volumes" in out
    verbose = agent.docker("system", "df", "-v").stdout.decode()
    assert agent.busybox.rsplit(":", 1)[0] in verbose


def test_credentials_of_the_clients_config_reach_the_registry(
    agent: DockerAgent, auth_registry: RegistryServer, tmp_path: Path
) -> None:
    """docker sends the login of its config.json as X-Registry-Auth; the agent uses it."""
    auth = base64.b64encode(b"dock:yard-secret").decode()
    config = {"auths": {auth_registry.host: {"auth": auth}}}
    config_dir = tmp_path / "logged-in"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(config))
    ref = f"{auth_registry.host}/private/busybox:v1"
    logged_in = {**agent.api.env(), "DOCKER_CONFIG": str(config_dir)}

    def docker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["/usr/bin/docker", "-H", agent.api.host, *args],
            env=env,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    agent.docker("tag", "busybox:latest", ref)
    refused = docker("push", ref, env=agent.api.env())
    assert refused.returncode != 0 or b"error" in refused.stdout.lower(), refused
    pushed = docker("push", ref, env=logged_in)
    assert pushed.returncode == 0 and b"v1: digest: sha256:" in pushed.stdout, pushed
    agent.docker("rmi", ref)
    anonymous = docker("pull", ref, env=agent.api.env())
    assert anonymous.returncode != 0
    # The CLI asks for a login on Docker's 401, as it does against dockerd.
    assert b"Please login prior to pull" in anonymous.stdout, anonymous
    pulled = docker("pull", ref, env=logged_in)
    assert pulled.returncode == 0, pulled
    assert f"Downloaded newer image for {ref}".encode() in pulled.stdout


def test_prune_images_and_volumes_last(agent: DockerAgent) -> None:
    """Last in the module: `image prune -a` removes every image no container uses."""
    agent.docker("volume", "create", "prunable")
    agent.docker("run", "-d", "--name", "holder", "-v", "kept:/data", "busybox:latest", "true")
    agent.docker("wait", "holder")
    [busybox] = agent.docker_json("image", "inspect", "busybox:latest")
    in_use = agent.docker("rmi", busybox["Id"][7:19], check=False)
    assert in_use.returncode != 0 and b"used by container" in in_use.stderr, in_use
    pruned = agent.docker("volume", "prune", "-f").stdout.decode()
    assert "prunable" in pruned
    assert "kept" not in pruned  # the stopped container still uses it
    out = agent.docker("image", "prune", "-a", "-f").stdout.decode()
    assert "Total reclaimed space" in out
    assert agent.busybox in out or "Deleted: sha256:" in out
    left = agent.docker("images", "-q", "--no-trunc").stdout.decode().split()
    assert set(left) == {busybox["Id"]}  # the container's image stays, with its tags
    agent.docker("rm", "holder")
    agent.docker("volume", "rm", "kept")
