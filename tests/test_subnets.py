"""The controller's node subnet pool (controller/subnets.py): the allocation rules, and
the registry handing subnets out to nodes that register at once (real etcd)."""

from __future__ import annotations

import asyncio

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.nodes import NodeRegistry
from dockyard.controller.store import Store
from dockyard.controller.subnets import SubnetPool, host_of_peer
from dockyard.v1.dispatcher_pb2 import SessionHello
from dockyard.v1.types_pb2 import NodeDescription, NodeNetwork


def wants(subnet: str = "10.87.0.0/16", fixed: bool = False) -> NodeDescription:
    return NodeDescription(bridge_subnet=subnet, bridge_subnet_fixed=fixed)


def test_new_nodes_get_the_next_free_blocks() -> None:
    pool = SubnetPool("10.87.0.0/16", 24)
    first = pool.assign("a", NodeNetwork(), wants(), [])
    second = pool.assign("b", NodeNetwork(), wants(), [("a", first.subnet)])
    assert (first.subnet, second.subnet) == ("10.87.0.0/24", "10.87.1.0/24")


def test_a_node_keeps_its_subnet_across_registrations() -> None:
    pool = SubnetPool()
    kept = pool.assign(
        "a",
        NodeNetwork(subnet="10.87.5.0/24"),
        wants(),
        [("a", "10.87.5.0/24"), ("b", "10.87.0.0/24")],
    )
    assert kept.subnet == "10.87.5.0/24"


def test_a_fixed_subnet_is_kept_unless_it_overlaps_another_node() -> None:
    pool = SubnetPool()
    assert (
        pool.assign("a", NodeNetwork(), wants("10.210.1.0/24", True), []).subnet == "10.210.1.0/24"
    )
    clash = pool.assign(
        "a", NodeNetwork(), wants("10.87.0.0/16", True), [("bbbbbbbbbbbbbbbb", "10.87.3.0/24")]
    )
    assert clash.subnet == ""
    assert "overlaps node bbbbbbbbbbbb's" in clash.message


@pytest.mark.parametrize(
    "subnet",
    ["0.0.0.0/0", "10.0.0.0/4", "127.0.0.0/8", "banana", "10.1.2.0/24" + "x" * 100, "10.1.2.3/24"],
)
def test_a_fixed_subnet_that_no_bridge_could_use_is_not_taken(subnet: str) -> None:
    refused = SubnetPool().assign("a", NodeNetwork(), wants(subnet, True), [])
    assert refused.subnet == "" and "not usable" in refused.message
    assert len(refused.message) < 200


def test_pool_blocks_skip_fixed_subnets_inside_the_pool() -> None:
    pool = SubnetPool("10.87.0.0/23", 24)
    assert (
        pool.assign("b", NodeNetwork(), wants(), [("a", "10.87.0.0/25")]).subnet == "10.87.1.0/24"
    )
    full = pool.assign("c", NodeNetwork(), wants(), [("a", "10.87.0.0/24"), ("b", "10.87.1.0/24")])
    assert full.subnet == "" and "no free /24 left" in full.message


def test_an_agent_without_a_bridge_gets_none() -> None:
    assert (
        SubnetPool().assign("a", NodeNetwork(), wants(""), []).message
        == "the agent has no bridge network"
    )


@pytest.mark.parametrize(
    "pool, size, needle",
    [
        ("10.87.0.1/16", 24, "--node-subnet-pool"),
        ("banana", 24, "--node-subnet-pool"),
        ("10.87.0.0/16", 12, "--node-subnet-size 12"),
        ("10.87.0.0/16", 30, "--node-subnet-size 30"),
    ],
)
def test_bad_pools_are_refused_naming_the_flag(pool: str, size: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SubnetPool(pool, size)


def test_host_of_peer() -> None:
    assert host_of_peer("ipv4:10.0.0.2:5100") == "10.0.0.2"
    assert host_of_peer("ipv6:[::1]:5100") == "::1"
    assert host_of_peer("unix:/run/x.sock") == ""


async def test_nodes_registering_at_once_get_distinct_subnets_and_keep_them(
    etcd: EtcdServer,
) -> None:
    store = Store([etcd.endpoint], "/test")
    await store.connect(5)
    try:
        registry = NodeRegistry(store, SubnetPool("10.87.0.0/16", 24))

        def hello(i: int) -> SessionHello:
            return SessionHello(node_id=f"node{i:04}abcd", name=f"n{i}", description=wants())

        nodes = await asyncio.gather(
            *(registry.register(hello(i), f"ipv4:10.0.0.{i}:5") for i in range(20))
        )
        subnets = {node.id: node.network.subnet for node in nodes}
        assert len(set(subnets.values())) == 20 and "" not in subnets.values()
        assert {node.network.address for node in nodes} == {f"10.0.0.{i}" for i in range(20)}
        again = hello(3)
        again.description.bridge_subnet = subnets[again.node_id]  # it switched to it
        assert (await registry.register(again, "ipv4:10.0.0.3:5")).network.subnet == subnets[
            again.node_id
        ]
    finally:
        await store.close()
