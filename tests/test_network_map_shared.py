"""Every node's network map built from one shared part per send (controller/network_map.py)
is exactly the map the per-node builder made before it: the same bytes for every node,
in a send to every session and in the greeting of a session that opens."""

from __future__ import annotations

import asyncio
from typing import cast

from dockyard.common.states import TaskState
from dockyard.controller.network_map import (
    IngressView,
    Names,
    NetworkMapper,
    OverlayView,
    Revoked,
    Routes,
)
from dockyard.controller.overlay_map import node_overlays
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NODES, TASKS, Store
from dockyard.v1.dispatcher_pb2 import (
    DispatcherMessage,
    IngressPort,
    NetworkMap,
    PeerNetwork,
    ServiceAddresses,
)
from dockyard.v1.networks_pb2 import Network, NetworkSpec
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import PortConfig, Service, Task

REVOKED = {"serials": ["0b", "0a"]}


def reference_map(
    node: Node,
    routes: Routes,
    names: Names,
    revoked: Revoked,
    overlay: OverlayView,
    ingress: IngressView,
) -> NetworkMap:
    """The per-node builder as it was (every peer a new message for every node)."""
    peers = [
        PeerNetwork(node_id=node_id, subnet=subnet, address=address)
        for node_id, subnet, address in sorted(routes)
        if node_id != node.id
    ]
    services = [ServiceAddresses(name=name, addresses=addresses) for name, addresses in names]
    return NetworkMap(
        subnet=node.network.subnet,
        peers=peers,
        services=services,
        revoked_serials=revoked,
        overlays=node_overlays(node.id, *overlay),
        address=node.network.address,
        ingress=[
            IngressPort(
                published_port=published,
                target_port=target,
                protocol=protocol,
                backends=backends,
                ingress_backends=overlay,
            )
            for published, target, protocol, backends, overlay in ingress[0]
        ],
        ingress_address=dict(ingress[1]).get(node.id, ""),
    )


def make_node(index: int, subnet: bool = True, address: bool = True) -> Node:
    node = Node(id=f"n{index}")
    if subnet:
        node.network.subnet = f"10.210.{index}.0/24"
    if address:
        node.network.address = f"192.0.2.{index}"
    return node


def task(task_id: str, service_id: str, node_id: str, *held: tuple[str, str]) -> Task:
    found = Task(id=task_id, service_id=service_id, node_id=node_id)
    found.desired_state = TaskState.RUNNING
    found.status.state = TaskState.RUNNING  # type: ignore[assignment]
    found.status.address = f"10.210.{node_id[1:]}.{len(task_id) + 1}"
    for network_id, address in held:
        found.networks.add(network_id=network_id, address=address)
    return found


def cluster() -> ClusterState:
    """Nodes with and without routes, a node on the ingress network and one not, a
    meshed service, a plain one, tasks on an overlay and on the ingress network."""
    state = ClusterState(cast(Store, None))  # the view alone: nothing here reads the store
    nodes = [make_node(i) for i in range(1, 7)]
    nodes += [make_node(7, address=False), make_node(8, subnet=False)]
    state.nodes.update({n.id: n for n in nodes})
    ingress = Network(id="ing", subnet="10.113.0.0/24", vni=4200, spec=NetworkSpec(ingress=True))
    ingress.node_addresses.update({"n1": "10.113.0.9", "n2": "10.113.0.8", "n5": "10.113.0.7"})
    green = Network(id="green", subnet="10.114.0.0/24", vni=4201)
    green.spec.name = "green"
    state.networks.update({"ing": ingress, "green": green})
    web = Service(id="s1")
    web.spec.name = "web"
    web.spec.task.ports.append(
        PortConfig(published_port=8080, target_port=80, publish_mode="ingress")
    )
    db = Service(id="s2")
    db.spec.name = "db"
    state.services.update({"s1": web, "s2": db})
    tasks = [
        task("t1", "s1", "n2", ("ing", "10.113.0.2"), ("green", "10.114.0.2")),
        task("t22", "s1", "n3", ("ing", "10.113.0.3")),
        task("t333", "s2", "n3", ("green", "10.114.0.3")),
        task("t4444", "s2", "n4"),
    ]
    for found in tasks:
        state.tasks[found.id] = found
        state.tasks_by_service[found.service_id].add(found.id)
    return state


def expected(mapper: NetworkMapper, node: Node) -> bytes:
    current = (
        mapper._current_routes(),
        mapper._current_names(),
        mapper._current_revocations(),
        mapper._current_overlays(),
        mapper._current_ingress(),
    )
    message = DispatcherMessage(network=reference_map(node, *current))
    return message.SerializeToString(deterministic=True)


async def test_every_session_gets_the_map_built_for_it_alone() -> None:
    state = cluster()
    posted: dict[str, DispatcherMessage] = {}

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted[node_id] = message
        return True

    sessions = [*state.nodes, "gone"]  # a session whose node left the view gets nothing
    mapper = NetworkMapper(state, post, lambda: sessions, lambda now: REVOKED["serials"])
    assert mapper._current_overlays()[0], "the cluster has overlays"
    running = asyncio.create_task(mapper.run())
    try:
        await asyncio.sleep(0.05)
        moved = Task()
        moved.CopyFrom(state.tasks["t4444"])
        moved.status.address = "10.210.4.9"  # a name changes: a send to every session
        state._put(TASKS, state.tasks, moved.id, moved)
        mapper.revocations_changed()
        for _ in range(200):
            if len(posted) == len(state.nodes):
                break
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert sorted(posted) == sorted(state.nodes)
    for node_id, node in state.nodes.items():
        assert posted[node_id].SerializeToString(deterministic=True) == expected(mapper, node)
        assert "10.210.4.9" in str(posted[node_id].network.services)
    assert [p.node_id for p in posted["n3"].network.peers] == ["n1", "n2", "n4", "n5", "n6"]


def test_a_greeting_is_the_map_built_for_the_node_alone() -> None:
    state = cluster()
    posted: dict[str, DispatcherMessage] = {}

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted[node_id] = message
        return True

    mapper = NetworkMapper(state, post, lambda: (), lambda now: REVOKED["serials"])
    joining = make_node(9)  # just registered: not in the view yet
    for node in [*state.nodes.values(), joining]:
        mapper.send_now(node)
        assert posted[node.id].SerializeToString(deterministic=True) == expected(mapper, node)


def test_a_greeting_has_the_revocations_of_its_moment() -> None:
    """The shared part of the greetings is kept for a while, their revoked serials not."""
    state = cluster()
    posted: dict[str, DispatcherMessage] = {}
    revoked = ["0a"]

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted[node_id] = message
        return True

    mapper = NetworkMapper(state, post, lambda: (), lambda now: list(revoked))
    mapper.send_now(state.nodes["n1"])
    revoked.append("0c")
    mapper.send_now(state.nodes["n2"])
    assert list(posted["n1"].network.revoked_serials) == ["0a"]
    assert list(posted["n2"].network.revoked_serials) == ["0a", "0c"]
    assert posted["n2"].SerializeToString(deterministic=True) == expected(mapper, state.nodes["n2"])


def test_the_routes_follow_every_node_change() -> None:
    """The routes are walked again only after a node's record changed: each change (a
    new address, a node gone, one added) is in the next look, none is missed."""
    state = cluster()
    mapper = NetworkMapper(state, lambda node_id, message: True, lambda: ())

    def walked() -> Routes:
        return frozenset(
            (n.id, n.network.subnet, n.network.address)
            for n in state.nodes.values()
            if n.network.subnet and n.network.address
        )

    assert mapper._current_routes() == walked()
    moved = Node()
    moved.CopyFrom(state.nodes["n2"])
    moved.network.address = "192.0.2.99"
    state._put(NODES, state.nodes, "n2", moved)
    assert ("n2", "10.210.2.0/24", "192.0.2.99") in mapper._current_routes()
    assert mapper._current_routes() == walked()
    state._remove(NODES, state.nodes, "n3")
    assert mapper._current_routes() == walked()
    state._put(NODES, state.nodes, "n9", make_node(9))
    assert mapper._current_routes() == walked()
    assert len(walked()) == 6
