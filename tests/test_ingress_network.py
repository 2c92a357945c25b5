"""The ingress overlay network of the routing mesh (controller/ingress_network.py): the
nodes' addresses on it, the tasks' (the orchestrator), the maps that carry them."""

from __future__ import annotations

import pytest

from dockyard.common.states import TaskState
from dockyard.controller.ingress_network import (
    INGRESS_NAME,
    ensure_ingress_network,
    node_addresses,
    publishes_ingress,
)
from dockyard.controller.network_addresses import AddressExhausted
from dockyard.controller.network_map import ingress_ports, node_message, shared_map
from dockyard.controller.overlay_map import node_overlays, overlays
from dockyard.v1.networks_pb2 import Network, NetworkSpec
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import PortConfig, Service, Task

INGRESS = Network(
    id="ing", subnet="10.113.0.0/29", gateway="10.113.0.1", vni=4200, spec=NetworkSpec(ingress=True)
)


def node(node_id: str, address: str) -> Node:
    found = Node(id=node_id)
    found.network.address = address
    return found


def meshed(service_id: str) -> Service:
    found = Service(id=service_id)
    found.spec.name = service_id
    found.spec.task.ports.append(
        PortConfig(published_port=8080, target_port=80, publish_mode="ingress")
    )
    return found


def running(task_id: str, service_id: str, node_id: str, *held: tuple[str, str]) -> Task:
    found = Task(id=task_id, service_id=service_id, node_id=node_id)
    found.desired_state = TaskState.RUNNING
    found.status.state = TaskState.RUNNING  # type: ignore[assignment]
    found.status.address = f"10.87.0.{len(task_id)}"
    for network_id, address in held:
        found.networks.add(network_id=network_id, address=address)
    return found


def test_nodes_take_addresses_from_the_top_and_keep_them() -> None:
    network = Network()
    network.CopyFrom(INGRESS)
    first = node_addresses(network, ["n1", "n2"], used={"10.113.0.2"})
    assert first == {"n1": "10.113.0.6", "n2": "10.113.0.5"}
    network.node_addresses.update(first)
    # n1 left: its address is free again; n3 joined: a new one, n2's is kept
    again = node_addresses(network, ["n2", "n3"], used={"10.113.0.2", "10.113.0.6"})
    assert again == {"n2": "10.113.0.5", "n3": "10.113.0.4"}
    with pytest.raises(AddressExhausted, match="no free address"):
        node_addresses(network, ["a", "b", "c", "d", "e", "f"], used=set())


def test_only_a_published_ingress_port_needs_the_mesh() -> None:
    assert publishes_ingress(meshed("web").spec)
    host = meshed("web")
    host.spec.task.ports[0].publish_mode = "host"
    assert not publishes_ingress(host.spec)


def test_every_node_is_on_the_ingress_network_and_its_map_names_the_tasks_there() -> None:
    network = Network()
    network.CopyFrom(INGRESS)
    network.node_addresses.update({"n1": "10.113.0.6", "n2": "10.113.0.5", "n3": "10.113.0.4"})
    nodes = {n: node(n, f"192.0.2.{i}") for i, n in enumerate(("n1", "n2", "n3"), start=1)}
    services = [meshed("web")]
    tasks = [running("t1", "web", "n2", ("ing", "10.113.0.2"))]
    maps, members = overlays({"ing": network}, services, tasks, nodes)
    # n3 runs no task of the mesh and still joins the network (it answers the port)
    assert members == {n: frozenset({"ing"}) for n in nodes}
    (ingress,) = node_overlays("n3", maps, members)
    assert [(e.address, e.host) for e in ingress.endpoints] == [
        ("10.113.0.2", "192.0.2.2"),
        ("10.113.0.4", "192.0.2.3"),
        ("10.113.0.5", "192.0.2.2"),
        ("10.113.0.6", "192.0.2.1"),
    ]
    assert list(ingress.names) == []  # the mesh's network resolves no names

    ports = ingress_ports(services, lambda sid: tasks if sid == "web" else [], "ing")
    view = (ports, tuple(sorted(network.node_addresses.items())))
    shared = shared_map(frozenset(), (), (), (maps, members), view)
    sent = node_message(nodes["n3"], shared).network
    assert sent.ingress_address == "10.113.0.4"
    assert [(p.published_port, list(p.ingress_backends)) for p in sent.ingress] == [
        (8080, ["10.113.0.2"])
    ]


class Registry:
    """A NetworkRegistry's list and create (a store is not needed for the race)."""

    def __init__(self, existing: list[Network]) -> None:
        self.networks = existing
        self.created: list[NetworkSpec] = []

    async def list_all(self) -> list[Network]:
        return list(self.networks)

    async def create(self, spec: NetworkSpec) -> Network:
        self.created.append(spec)
        made = Network(id="new", spec=spec)
        self.networks.append(made)
        return made


async def test_the_ingress_network_is_made_once() -> None:
    registry = Registry([])
    made = await ensure_ingress_network(registry)  # type: ignore[arg-type]
    assert (made.spec.name, made.spec.ingress) == (INGRESS_NAME, True)
    assert await ensure_ingress_network(registry) is not None  # type: ignore[arg-type]
    assert len(registry.created) == 1


async def test_the_ingress_network_scopes_no_names_and_opens_no_way_out() -> None:
    from dockyard.agent.network.overlays import Joined, OverlayManager
    from dockyard.v1.networks_pb2 import OverlayName, OverlayNetworkMap

    red = Network(id="red", subnet="10.112.0.0/24", vni=4096)
    named = OverlayNetworkMap(network=red, names=[OverlayName(name="db", addresses=["10.112.0.2"])])
    walled = Network(id="walled", subnet="10.112.1.0/24", vni=4097)
    walled.spec.internal = True
    manager = OverlayManager()  # no devices: the maps are kept, nothing is made
    await manager.on_maps(
        [OverlayNetworkMap(network=INGRESS), named, OverlayNetworkMap(network=walled)]
    )
    manager._joined = {
        "meshed": Joined("ns1", "10.87.0.2", [("ing", "10.113.0.2")]),
        "both": Joined("ns2", "10.87.0.3", [("ing", "10.113.0.3"), ("red", "10.112.0.3")]),
        "internal": Joined("ns3", "10.87.0.4", [("walled", "10.112.1.2"), ("ing", "10.113.0.4")]),
    }
    # the first is not scoped (it resolves every service, as a bridge container does)
    assert manager.names_by_client() == {"10.87.0.3": {"db": ["10.112.0.2"]}, "10.87.0.4": {}}
    # an internal-only task stays internal when it also publishes a port through the mesh
    assert manager.isolated_clients() == {"10.87.0.4"}
