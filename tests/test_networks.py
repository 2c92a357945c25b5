"""Cluster networks end to end: a real controller (etcd), hollow agents, the CLI.

`network create|ls|inspect|rm`, the allocator's choices as the controller makes them
(never a node's subnet, one VNI each), services naming networks (`--network
NAME,alias=A`) and the refusal to remove a network in use.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("networks") / "cluster")
    cluster.root.mkdir(parents=True)
    try:
        cluster.start_controller()
        cluster.start_hollow_nodes(("n1", "n2"))
        yield cluster
    finally:
        cluster.stop()


def inspect(cluster: Cluster, *names: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(cluster.cli("network", "inspect", *names).stdout)
    return found


def test_networks_get_their_own_subnets_and_vnis(cluster: Cluster) -> None:
    cluster.cli("network", "create", "--label", "tier=front", "front")
    cluster.cli("network", "create", "--internal", "back")
    try:
        front, back = inspect(cluster, "front", "back")
        subnets = [ipaddress.IPv4Network(n["subnet"]) for n in (front, back)]
        assert not subnets[0].overlaps(subnets[1])
        assert {front["vni"], back["vni"]} == {4096, 4097}
        assert front["spec"]["driver"] == "overlay"
        assert back["spec"]["internal"] is True
        assert front["gateway"] == str(subnets[0][1])
        for node in cluster.nodes().values():
            if not node.get("network", {}).get("subnet"):
                continue  # a hollow node has no bridge
            node_subnet = ipaddress.IPv4Network(node["network"]["subnet"])
            assert not any(s.overlaps(node_subnet) for s in subnets)
        listed = cluster.cli("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout
        assert listed.splitlines() == ["back overlay", "front overlay"]
        labelled = cluster.cli("network", "ls", "-q", "-f", "label=tier=front").stdout
        assert labelled.split() == [front["id"]]
    finally:
        cluster.cli("network", "rm", "front", "back")
    assert cluster.cli("network", "ls", "-q").stdout.strip() == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subnet", "10.87.9.0/24", "x1"], "overlaps the node subnet pool (10.87.0.0/16)"),
        (["--subnet", "10.300.0.0/24", "x2"], "spec.subnet"),
        (["bridge"], "'bridge' is reserved"),
    ],
)
def test_a_refused_network_is_not_written(cluster: Cluster, args: list[str], message: str) -> None:
    result = cluster.cli("network", "create", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert cluster.cli("network", "ls", "-q").stdout.strip() == ""


def test_a_name_is_taken_once(cluster: Cluster) -> None:
    cluster.cli("network", "create", "--subnet", "10.130.0.0/24", "solo")
    try:
        again = cluster.cli("network", "create", "solo", check=False)
        assert again.returncode != 0 and "already exists" in again.stderr
        overlapping = cluster.cli(
            "network", "create", "--subnet", "10.130.0.0/16", "wide", check=False
        )
        assert "overlaps network solo (10.130.0.0/24)" in overlapping.stderr
    finally:
        cluster.cli("network", "rm", "solo")


def test_services_name_networks_and_keep_them_from_removal(cluster: Cluster) -> None:
    cluster.cli("network", "create", "app")
    network_id = inspect(cluster, "app")[0]["id"]
    cluster.cli(
        "service", "create", "-d", "--name", "api", "--network", "name=app,alias=backend",
        "--endpoint-mode", "dnsrr", "busybox", "sleep", "3600",
    )  # fmt: skip
    try:
        service = json.loads(cluster.cli("service", "inspect", "api").stdout)[0]
        task = service["spec"]["task"]
        assert task["networks"] == [
            {"target": "app", "aliases": ["backend"], "network_id": network_id, "vip": ""}
        ]
        assert task["endpoint_mode"] == "dnsrr"
        refused = cluster.cli("network", "rm", "app", check=False)
        assert refused.returncode != 0
        assert "network app is in use by service api" in refused.stderr
        missing = cluster.cli(
            "service", "create", "--name", "lost", "--network", "nowhere", "busybox", check=False
        )
        assert "network 'nowhere' not found" in missing.stderr
    finally:
        cluster.cli("service", "rm", "api")
    cluster.wait_for(
        lambda: cluster.cli_ok("network", "rm", "app"), timeout=20, what="app removable"
    )


def test_tasks_get_addresses_and_the_service_a_vip_it_keeps(cluster: Cluster) -> None:
    cluster.cli("network", "create", "--subnet", "10.131.0.0/28", "small")
    cluster.cli(
        "service", "create", "-d", "--name", "web", "--replicas", "3", "--network", "small",
        "busybox", "sleep", "3600",
    )  # fmt: skip
    try:
        vip = service_vip(cluster, "web")
        assert vip == "10.131.0.14"  # the top of the subnet
        addresses = task_addresses(cluster, "web")
        assert sorted(addresses) == ["10.131.0.2", "10.131.0.3", "10.131.0.4"]  # .1: gateway
        cluster.cli("service", "update", "--env-add", "A=1", "web")
        assert service_vip(cluster, "web") == vip  # an update keeps it
        cluster.cli("service", "update", "--endpoint-mode", "dnsrr", "web")
        assert service_vip(cluster, "web") == ""
    finally:
        cluster.cli("service", "rm", "web")
    cluster.wait_for(
        lambda: cluster.cli_ok("network", "rm", "small"), timeout=20, what="small removable"
    )


def test_services_scaled_in_one_round_get_distinct_addresses(cluster: Cluster) -> None:
    """The orchestrator plans several services in one round and commits their tasks
    together: each service's new tasks must not take the addresses another's just took
    (found by tests/network/test_stack_segments.py: a stack's first two services had a
    task each on 10.112.2.2)."""
    cluster.cli("network", "create", "--subnet", "10.131.1.0/27", "shared")
    for name in ("one", "two", "three"):
        cluster.cli("service", "create", "-d", "--name", name, "--replicas", "0",
                    "--network", "shared", "busybox", "sleep", "3600")  # fmt: skip
    try:
        cluster.cli("service", "scale", "-d", "one=3", "two=3", "three=3")
        cluster.wait_for(
            lambda: sum(len(task_addresses(cluster, n)) for n in ("one", "two", "three")) == 9,
            timeout=20,
            what="nine tasks with addresses",
        )
        held = [a for n in ("one", "two", "three") for a in task_addresses(cluster, n)]
        assert len(set(held)) == 9, sorted(held)
    finally:
        cluster.cli("service", "rm", "one", "two", "three")
    cluster.wait_for(
        lambda: cluster.cli_ok("network", "rm", "shared"), timeout=20, what="shared removable"
    )


def service_vip(cluster: Cluster, name: str) -> str:
    service = json.loads(cluster.cli("service", "inspect", name).stdout)[0]
    return str(service["spec"]["task"]["networks"][0].get("vip", ""))


def task_addresses(cluster: Cluster, name: str) -> list[str]:
    tasks = json.loads(cluster.cli("service", "ps", name, "-o", "json").stdout)
    return [n["address"] for t in tasks for n in t.get("networks", [])]


def test_an_ingress_port_is_unique_in_the_cluster(cluster: Cluster) -> None:
    def create(name: str, publish: str) -> Any:
        return cluster.cli(
            "service", "create", "-d", "--name", name, "--publish", publish,
            "busybox", "sleep", "3600", check=False,
        )  # fmt: skip

    made = []
    try:
        assert create("mesh1", "published=18080,target=80,mode=ingress").returncode == 0
        made.append("mesh1")
        taken = create("mesh2", "18080:80")
        assert taken.returncode != 0
        assert "port 18080/tcp is already published by service mesh1 (ingress mode)" in (
            taken.stderr
        )
        range_ = "published=18081-18082,target=80-81,mode=host"
        assert create("mesh3", range_).returncode == 0  # host mode, a range
        made.append("mesh3")
        host = "published=18081,target=80,mode=host"
        assert create("mesh4", host).returncode == 0  # host next to host: allowed
        made.append("mesh4")
        refused = create("mesh5", "published=18082,target=80,mode=ingress")
        assert "already published by service mesh3 (host mode)" in refused.stderr
        # an update keeps the service's own port
        cluster.cli("service", "update", "-d", "--env-add", "A=1", "mesh1")
        spec = json.loads(cluster.cli("service", "inspect", "mesh1").stdout)[0]["spec"]
        (port,) = spec["task"]["ports"]
        assert (port["published_port"], port["publish_mode"]) == (18080, "ingress")
    finally:
        for name in made:
            cluster.cli("service", "rm", name, check=False)


def test_an_ingress_port_without_a_published_one_gets_one_and_frees_it(
    cluster: Cluster,
) -> None:
    """`-p 80` (the mesh's by default, as in Swarm) gets a port from 30000-32767, unique in
    the cluster, shown by `service inspect` and `service ls`, kept across updates,
    and released by `--publish-rm` and `service rm`."""

    def port_of(name: str) -> tuple[int, str]:
        spec = json.loads(cluster.cli("service", "inspect", name).stdout)[0]["spec"]
        (port,) = spec["task"]["ports"]
        return port["published_port"], port["publish_mode"]

    made = ["auto1", "auto2"]
    try:
        for name in made:
            cluster.cli("service", "create", "-d", "--name", name, "-p", "80", "busybox")
        first, second = port_of("auto1"), port_of("auto2")
        assert first[1] == second[1] == "ingress"
        assert 30000 <= first[0] < second[0] <= 32767
        listed = cluster.cli("service", "ls").stdout
        assert f"*:{first[0]}->80/tcp" in listed and f"*:{second[0]}->80/tcp" in listed
        cluster.cli("service", "update", "-d", "--env-add", "A=1", "auto1")
        assert port_of("auto1") == first
        cluster.cli("service", "update", "-d", "--publish-rm", "80", "auto1")  # by target
        spec = json.loads(cluster.cli("service", "inspect", "auto1").stdout)[0]["spec"]
        assert not spec["task"].get("ports")
        cluster.cli("service", "create", "-d", "--name", "auto3", "-p", "target=81", "busybox")
        made.append("auto3")
        assert port_of("auto3") == first  # released, handed out again
    finally:
        for name in made:
            cluster.cli("service", "rm", name, check=False)


def test_the_mesh_has_its_ingress_network_with_every_task_and_node_on_it(
    cluster: Cluster,
) -> None:
    cluster.cli(
        "service", "create", "-d", "--name", "meshed", "--replicas", "2",
        "--publish", "published=18090,target=80,mode=ingress", "busybox", "sleep", "3600",
    )  # fmt: skip
    try:
        assert "ingress" in cluster.cli("network", "ls").stdout
        (ingress,) = inspect(cluster, "ingress")
        assert ingress["spec"]["ingress"] is True and ingress["vni"]
        subnet = ipaddress.ip_network(ingress["subnet"])
        cluster.wait_for(
            lambda: len(task_addresses(cluster, "meshed")) == 2, timeout=20, what="tasks"
        )
        addresses = task_addresses(cluster, "meshed")  # as any network attachment
        assert len(addresses) == 2 and all(ipaddress.ip_address(a) in subnet for a in addresses)

        def nodes_addressed() -> bool:
            held = inspect(cluster, "ingress")[0].get("node_addresses", {})
            return len(held) == 2

        cluster.wait_for(nodes_addressed, timeout=20, what="the nodes' ingress addresses")
        held = inspect(cluster, "ingress")[0]["node_addresses"]
        assert all(ipaddress.ip_address(a) in subnet for a in held.values())
        assert not set(held.values()) & set(addresses)
        named = cluster.cli(
            "service", "create", "--name", "x", "--network", "ingress", "busybox", check=False
        )
        assert named.returncode != 0 and "is the routing mesh's (ingress)" in named.stderr
        refused = cluster.cli("network", "rm", "ingress", check=False)
        assert refused.returncode != 0
        assert "service meshed (a port published with mode=ingress)" in refused.stderr
    finally:
        cluster.cli("service", "rm", "meshed")
