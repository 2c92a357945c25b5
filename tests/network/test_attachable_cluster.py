"""Standalone containers on an attachable overlay network, end to end:
`deploy/local-cluster up --hosts 2` (each runc agent in a network namespace of its own),
`docker run --network NET` through one agent's Docker API.

The container gets an address on the overlay, resolves and reaches the service on it (on
the other host too), a task resolves and reaches the container by its name; a network
that is not `--attachable` is refused as Docker refuses it; an agent restart keeps the
container on the network; `network rm` waits for the container's removal.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.network.conftest import free_subnet
from tests.network.test_overlay_cluster import (
    WEB,
    inside,
    lookup,
    netns_of,
    ok,
    running,
    tasks,
    wait,
)
from tests.test_local_cluster import LocalCluster, _local_cluster, _offsets

pytestmark = [pytest.mark.runc, pytest.mark.registry, pytest.mark.slow]

DOCKER = "/usr/bin/docker"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    if not os.path.exists(DOCKER):
        pytest.skip("needs the docker CLI (docker.io)")
    tmp_path = tmp_path_factory.mktemp("attachable-cluster")
    for lc in _local_cluster(tmp_path, _offsets(2), 2):
        lan = str(ipaddress.IPv4Network(free_subnet()))
        lc.up("--hosts", "2", "--lan", lan, "--no-sample")
        try:
            yield lc, lan
        finally:  # kept for a failure's post-mortem (the state dir goes with `down`)
            shutil.copytree(lc.state_dir / "logs", tmp_path / "logs", dirs_exist_ok=True)


def docker(lc: LocalCluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    socket = lc.state_dir / "agents" / node / "docker.sock"
    return subprocess.run(
        [DOCKER, "-H", f"unix://{socket}", *args], capture_output=True, text=True, timeout=120
    )


def shown_on_att(
    lc: LocalCluster, address: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> None:
    """docker inspect and ps show solo on the cluster network `att`, as Docker shows a
    container on an overlay; `dockyard network inspect att` lists it."""
    shown = json.loads(docker(lc, "node-1", "inspect", "solo").stdout)[0]
    assert list(shown["NetworkSettings"]["Networks"]) == ["att"]
    endpoint = shown["NetworkSettings"]["Networks"]["att"]
    assert (endpoint["IPAddress"], endpoint["IPPrefixLen"]) == (address, subnet.prefixlen)
    assert "soloalias" in endpoint["Aliases"]
    assert shown["HostConfig"]["NetworkMode"] == "att"
    listed = docker(lc, "node-1", "ps", "--filter", "name=solo", "--format", "{{.Networks}}")
    assert listed.stdout.strip() == "att"
    (member,) = json.loads(ok(lc, "network", "inspect", "att"))[0]["containers"]
    assert (member["name"], member["address"]) == ("solo", address)
    assert member["container_id"] == shown["Id"] and member["node"]
    # joined at create, left when removed: connect and disconnect say so
    again = docker(lc, "node-1", "network", "connect", "att", "solo")
    assert again.returncode != 0
    assert "endpoint with name solo already exists in network att" in again.stderr
    leave = docker(lc, "node-1", "network", "disconnect", "att", "solo")
    assert leave.returncode != 0
    assert "a container leaves a cluster network when it is removed" in leave.stderr


def test_a_standalone_container_joins_an_attachable_network(
    cluster: tuple[LocalCluster, str],
) -> None:
    lc, lan = cluster
    ok(lc, "network", "create", "--attachable", "att")
    ok(lc, "network", "create", "closed")
    subnet = ipaddress.ip_network(json.loads(ok(lc, "network", "inspect", "att"))[0]["subnet"])
    ok(lc, "service", "create", "-d", "--name", "attweb", "--replicas", "2",
       "--max-replicas-per-node", "1", "--network", "att", "busybox", "sh", "-c", WEB)  # fmt: skip
    wait(lambda: running(lc, "attweb", 2), "attweb running")
    vip = json.loads(ok(lc, "service", "inspect", "attweb"))[0]["spec"]["task"]["networks"][0][
        "vip"
    ]

    refused = docker(lc, "node-1", "run", "-d", "--network", "closed", "busybox", "true")
    assert refused.returncode != 0
    assert (
        "Could not attach to network closed: rpc error: code = PermissionDenied desc = "
        "network closed not manually attachable"
    ) in refused.stderr

    made = docker(lc, "node-1", "run", "-d", "--name", "solo", "--network", "att",
                  "--network-alias", "soloalias", "busybox", "sleep", "3600")  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        task_netns = netns_of(tasks(lc, "attweb")[0]["networks"][0]["address"])  # type: ignore[index]
        wait(lambda: len(lookup(task_netns, "solo")) == 1, "solo's name in a task's DNS")
        (address,) = lookup(task_netns, "solo")
        assert ipaddress.ip_address(address) in subnet
        shown_on_att(lc, address, subnet)
        assert inside(task_netns, "ping", "-c", "1", "-W", "3", address).returncode == 0

        solo = netns_of(address)  # looked at from inside, as a task is (its eth0: the bridge)

        def resolves_the_vip() -> bool:
            return lookup(solo, "attweb") == [vip]

        wait(resolves_the_vip, "solo resolving attweb to its VIP")
        assert lookup(solo, "tasks.attweb") == sorted(
            n["address"]
            for t in tasks(lc, "attweb")
            for n in t["networks"]  # type: ignore[attr-defined]
        )
        served = {inside(solo, "wget", "-qO-", f"http://{vip}/").stdout.strip() for _ in range(12)}
        assert len(served) == 2, served  # both tasks, one on each host

        os.kill(lc.pid("node-1"), signal.SIGKILL)  # the container runs on; up restarts it
        lc.up("--hosts", "2", "--lan", lan, "--no-sample")
        wait(resolves_the_vip, "solo on the network again after the agent's restart")
        served = {inside(solo, "wget", "-qO-", f"http://{vip}/").stdout.strip() for _ in range(12)}
        assert len(served) == 2, served
        assert inside(task_netns, "ping", "-c", "1", "-W", "3", address).returncode == 0

        ok(lc, "service", "rm", "attweb")
        busy = lc.cli("network", "rm", "att")
        assert busy.returncode != 0 and "container solo" in busy.stderr
    finally:
        removed = docker(lc, "node-1", "rm", "-f", "solo")
        lc.cli("service", "rm", "attweb")
    assert removed.returncode == 0, removed.stderr
    wait(lambda: lc.cli("network", "rm", "att").returncode == 0, "att removable once solo is gone")
    ok(lc, "network", "rm", "closed")


def attached_names(lc: LocalCluster, network: str) -> list[str] | None:
    """The containers `network inspect` lists (None: the controller does not answer)."""
    shown = lc.cli("network", "inspect", network)
    if shown.returncode != 0:
        return None
    return [c["name"] for c in json.loads(shown.stdout)[0].get("containers", [])]


def test_a_container_removed_while_the_leader_is_away_frees_its_address(
    cluster: tuple[LocalCluster, str],
) -> None:
    lc, lan = cluster
    ok(lc, "network", "create", "--attachable", "away")
    made = docker(lc, "node-1", "run", "-d", "--name", "lone", "--network", "away",
                  "busybox", "sleep", "3600")  # fmt: skip
    assert made.returncode == 0, made.stderr
    agent = lc.pid("node-1")
    try:
        assert attached_names(lc, "away") == ["lone"]
        os.kill(lc.pid("controller"), signal.SIGTERM)  # the leader gone
        wait(lambda: lc.cli("info").returncode != 0, "the controller down")
        removed = docker(lc, "node-1", "rm", "-f", "lone")
        assert removed.returncode == 0, removed.stderr
        pending = lc.state_dir / "agents" / "node-1" / "dockerapi" / "pending-detaches.json"
        wait(
            lambda: pending.exists() and made.stdout.strip() in pending.read_text(),
            "the release recorded",
        )
        lc.up("--hosts", "2", "--lan", lan, "--no-sample")  # the controller back
        wait(lambda: attached_names(lc, "away") == [], "the release made once it answers")
        assert lc.pid("node-1") == agent  # without the agent's restart
        assert json.loads(pending.read_text()) == {"containers": []}
    finally:
        docker(lc, "node-1", "rm", "-f", "lone")
    wait(lambda: lc.cli("network", "rm", "away").returncode == 0, "away removable")
