"""`dockyard info` on a multi-controller cluster: every controller (leader or not,
reachable or not) from their lease-backed records, and every etcd member's health
from its own maintenance Status. Real etcd (one member, and a three-member cluster
of real etcd processes), real controller processes, the real CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.registration import Registration
from dockyard.controller.store import CONTROLLERS, Store
from dockyard.v1.control_pb2 import GetInfoRequest
from dockyard.v1.types_pb2 import ControllerRecord
from tests.chaos.etcd_cluster import EtcdCluster
from tests.conftest import Cluster, LoopThread

TTL = 3  # the fixture's --leader-ttl, which the registration lease follows


def info(cluster: Cluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.cli("info", "-o", "json").stdout)
    return data


def by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["controller_id"]: c for c in data["controllers"]}


def controller_id(cluster: Cluster) -> str:
    return (cluster.root / "controller" / "controller-id").read_text().strip()


@pytest.fixture
def shared_etcd(tmp_path: Path, loop_thread: LoopThread) -> Iterator[EtcdServer]:
    etcd = EtcdServer(tmp_path / "shared-etcd" / "data", log_path=tmp_path / "etcd.log")
    loop_thread.run(etcd.start())
    try:
        yield etcd
    finally:
        loop_thread.run(etcd.stop())


def two_controllers(
    cluster_factory: Callable[..., Cluster], etcd_endpoints: list[str], insecure: bool = False
) -> tuple[Cluster, Cluster]:
    first, second = cluster_factory(insecure=insecure), cluster_factory(insecure=insecure)
    first.etcd_endpoints = second.etcd_endpoints = list(etcd_endpoints)
    if not insecure:
        second.join_from = first  # with a controller token, as a second manager joins
    first.start_controller()
    second.start_controller()
    second.wait_for(lambda: len(info(second)["controllers"]) == 2, "both controllers listed")
    return first, second


@pytest.mark.parametrize("insecure", [False, True], ids=["mtls", "insecure"])
def test_info_lists_both_controllers_and_the_etcd_member(
    cluster_factory: Callable[..., Cluster], shared_etcd: EtcdServer, insecure: bool
) -> None:
    first, second = two_controllers(cluster_factory, [shared_etcd.endpoint], insecure)
    first_id, second_id = controller_id(first), controller_id(second)
    for asked in (first, second):
        data = info(asked)
        controllers = by_id(data)
        assert sorted(controllers) == sorted([first_id, second_id])
        assert [c["controller_id"] for c in data["controllers"] if c["is_leader"]] == [first_id]
        assert [c["controller_id"] for c in data["controllers"] if c["is_self"]] == [
            data["controller_id"]
        ]
        assert controllers[first_id]["api_address"] == first.address
        assert controllers[second_id]["api_address"] == second.address
        assert controllers[second_id]["http_address"] == f"127.0.0.1:{second.http_port}"
        # Each side dialled the other (over mutual TLS with its own certificate).
        assert all(c["reachable"] and c["error"] == "" for c in controllers.values())
        assert (
            controllers[first_id]["leader_since"] and "leader_since" not in controllers[second_id]
        )
        assert all(c["started_at"] and c["version"] for c in controllers.values())
        [member] = data["etcd_members"]
        assert member["client_urls"] == [f"http://{shared_etcd.endpoint}"]
        assert member["name"] == shared_etcd.name and member["id"]
        assert member["reachable"] and member["is_leader"] and member["error"] == ""
        assert int(member["db_size"]) > 0 and int(member["raft_term"]) >= 1
        assert int(member["raft_index"]) > 0 and member["version"]
    control = second.control()
    try:  # a plain GetInfo (a poll for the leader) dials nobody
        plain = control.GetInfo(GetInfoRequest(), timeout=10)
        assert not plain.controllers and not plain.etcd_members and not plain.is_leader
        assert len(control.GetInfo(GetInfoRequest(members=True), timeout=10).controllers) == 2
    finally:
        control.close()
    table = second.cli("info").stdout
    assert "Controllers:" in table and "etcd members:" in table
    assert f"{second_id[:12]} *" in table and first_id[:12] in table
    assert f"http://{shared_etcd.endpoint}" in table


def test_a_killed_controller_is_unreachable_then_gone_within_its_ttl(
    cluster_factory: Callable[..., Cluster], shared_etcd: EtcdServer
) -> None:
    first, second = two_controllers(cluster_factory, [shared_etcd.endpoint])
    first_id = controller_id(first)
    assert first.controller is not None
    first.controller.kill(signal.SIGKILL)
    killed = time.monotonic()
    data = info(second)
    within_ttl = time.monotonic() - killed < TTL
    dead = by_id(data).get(first_id)
    # While its record lives (a SIGKILL gives no lease back) the dial says it is down.
    assert dead is None or (not dead["reachable"] and dead["error"]), dead
    if within_ttl and dead is not None:
        assert dead["api_address"] == first.address
    gone = second.wait_for(
        lambda: first_id not in by_id(info(second)), "the record to expire", timeout=TTL * 4
    )
    assert time.monotonic() - killed < TTL * 4, gone
    second.wait_for(
        lambda: [c["is_leader"] for c in info(second)["controllers"]] == [True],
        "the survivor to lead, alone",
    )


def test_a_stopped_controller_leaves_the_list_at_once(
    cluster_factory: Callable[..., Cluster], shared_etcd: EtcdServer
) -> None:
    first, second = two_controllers(cluster_factory, [shared_etcd.endpoint])
    second_id = controller_id(second)
    assert second.controller is not None
    second.controller.stop()  # SIGTERM: the registration lease is given back
    assert second_id not in by_id(info(first))


# -- a three-member etcd cluster ------------------------------------------------------


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three real etcd processes forming one cluster (the chaos suite's helper)."""
    etcd = EtcdCluster(tmp_path / "etcd-cluster")
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.close()


def test_each_etcd_member_s_health_and_a_dead_one(
    cluster_factory: Callable[..., Cluster], etcd_cluster: EtcdCluster
) -> None:
    cluster = cluster_factory()
    cluster.etcd_endpoints = etcd_cluster.endpoints
    cluster.start_controller()

    def members() -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in info(cluster)["etcd_members"]}

    cluster.wait_for(
        lambda: [m["reachable"] for m in members().values()] == [True] * 3,
        "three reachable members",
    )
    found = members()
    assert sorted(found) == ["m0", "m1", "m2"]
    assert sum(m["is_leader"] for m in found.values()) == 1
    assert len({m["raft_term"] for m in found.values()}) == 1
    for member in etcd_cluster.members:
        assert found[member.name]["client_urls"] == [f"http://{member.endpoint}"]
    # A member that is not the leader dies: it stays listed, unreachable, with why.
    victim = next(m for m in etcd_cluster.members if not found[m.name]["is_leader"])
    victim.kill()
    cluster.wait_for(lambda: not members()[victim.name]["reachable"], "the dead member")
    after = members()
    assert after[victim.name]["error"] and not after[victim.name]["is_leader"]
    assert sum(m["is_leader"] for m in after.values()) == 1
    assert all(m["reachable"] for name, m in after.items() if name != victim.name)
    assert victim.name in cluster.cli("info").stdout


def test_info_answers_without_quorum_with_each_member_s_health(
    cluster_factory: Callable[..., Cluster], etcd_cluster: EtcdCluster
) -> None:
    """Two of three members dead: `info` still answers, says why nodes, tasks and
    controllers are missing, and lists every member with the one that is alive."""
    cluster = cluster_factory()
    cluster.etcd_endpoints = etcd_cluster.endpoints
    cluster.start_controller()
    cluster.wait_for(
        lambda: [m["reachable"] for m in info(cluster)["etcd_members"]] == [True] * 3,
        "three reachable members",
    )
    assert not info(cluster).get("state_error")
    survivor, *victims = etcd_cluster.members
    for member in victims:
        member.kill()

    def unreadable() -> dict[str, Any] | None:
        data = info(cluster)
        return data if data.get("state_error") else None

    cluster.wait_for(lambda: unreadable() is not None, "info without quorum", timeout=60)
    data = unreadable()
    assert data is not None
    assert data["state_error"].startswith("the cluster's state cannot be read: ")
    members = {m["name"]: m for m in data["etcd_members"]}
    assert sorted(members) == ["m0", "m1", "m2"]
    assert members[survivor.name]["reachable"]
    assert not any(members[m.name]["reachable"] for m in victims)
    assert all(members[m.name]["error"] for m in victims)
    text = cluster.cli("info", timeout=60).stdout
    assert "State:" in text and "the cluster's state cannot be read" in text
    assert "Nodes:" in text and "unknown (see State)" in text
    assert "etcd members:" in text and all(m.name in text for m in victims)


async def test_an_unreachable_etcd_is_reported_per_endpoint(etcd: EtcdServer) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    try:
        [member] = await store.etcd_members()
        assert member.reachable and member.name == etcd.name and member.raft_index > 0
        await etcd.stop()
        [member] = await store.etcd_members()
        assert not member.reachable and member.client_urls == (f"http://{etcd.endpoint}",)
        assert "etcd" in member.error or "refused" in member.error, member.error
    finally:
        await store.close()


async def wait_async(predicate: Callable[[], Any], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_registration_comes_back_and_leaves_with_its_controller(
    etcd: EtcdServer,
) -> None:
    store = Store([etcd.endpoint])
    await store.connect()
    record = ControllerRecord(controller_id="c1", api_address="127.0.0.1:1")
    registration = Registration(store, record, ttl=2)

    async def listed() -> bool:
        return await store.get_raw(CONTROLLERS, "c1") is not None

    async def absent() -> bool:
        return not await listed()

    try:
        async with asyncio.TaskGroup() as group:
            running = group.create_task(registration.run())
            await wait_async(listed, "the record")
            assert await store.get(CONTROLLERS, "c1") == record
            await store.delete(CONTROLLERS, "c1")  # by hand, under a live lease
            await wait_async(listed, "the record published again on its lease")
            await store.revoke_lease(registration._lease)  # the lease lost: the key goes too
            assert await absent()
            await wait_async(listed, "the record on a new lease")
            running.cancel()
        assert await absent()  # stopping gave the lease back
    finally:
        await store.close()
