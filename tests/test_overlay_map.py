"""The overlay part of each node's NetworkMap (controller/overlay_map.py): pure."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.overlay_map import node_overlays, overlays
from dockyard.v1.networks_pb2 import Network, NetworkAttachmentConfig, NetworkAttachmentRecord
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

RED = Network(id="red", subnet="10.112.0.0/24", gateway="10.112.0.1", vni=4096)
BLUE = Network(id="blue", subnet="10.112.1.0/24", gateway="10.112.1.1", vni=4097)


def node(node_id: str, address: str) -> Node:
    found = Node(id=node_id)
    found.network.address = address
    return found


def service(service_id: str, *attachments: NetworkAttachmentConfig, mode: str = "") -> Service:
    found = Service(id=service_id)
    found.spec.name = service_id
    found.spec.task.networks.extend(attachments)
    found.spec.task.endpoint_mode = mode
    return found


def task(task_id: str, service_id: str, node_id: str, state: int, *held: tuple[str, str]) -> Task:
    found = Task(id=task_id, service_id=service_id, node_id=node_id)
    found.desired_state = TaskState.RUNNING
    found.status.state = state  # type: ignore[assignment]
    for network_id, address in held:
        found.networks.add(network_id=network_id, address=address)
    return found


def test_each_node_gets_its_tasks_networks_with_every_endpoint_and_name() -> None:
    nodes = {"n1": node("n1", "192.0.2.1"), "n2": node("n2", "192.0.2.2")}
    services = [
        service(
            "web", NetworkAttachmentConfig(network_id="red", vip="10.112.0.254", aliases=["www"])
        ),
        service("db", NetworkAttachmentConfig(network_id="blue"), mode="dnsrr"),
    ]
    tasks = [
        task("t1", "web", "n1", TaskState.RUNNING, ("red", "10.112.0.2")),
        task("t2", "web", "n2", TaskState.ASSIGNED, ("red", "10.112.0.3")),
        task("t3", "db", "n2", TaskState.RUNNING, ("blue", "10.112.1.2")),
        task("t4", "web", "n1", TaskState.SHUTDOWN, ("red", "10.112.0.9")),
    ]
    maps, members = overlays({"red": RED, "blue": BLUE}, services, tasks, nodes)
    assert members == {"n1": frozenset({"red"}), "n2": frozenset({"red", "blue"})}
    (red,) = node_overlays("n1", maps, members)
    # an ASSIGNED task's entries are there before it runs; an ended one's are gone
    assert [(e.address, e.host) for e in red.endpoints] == [
        ("10.112.0.2", "192.0.2.1"),
        ("10.112.0.3", "192.0.2.2"),
    ]
    names = {n.name: (list(n.addresses), n.vip, list(n.backends)) for n in red.names}
    assert names == {
        "web": (["10.112.0.254"], "10.112.0.254", ["10.112.0.2"]),  # running tasks only
        "www": (["10.112.0.254"], "10.112.0.254", ["10.112.0.2"]),
        "tasks.web": (["10.112.0.2"], "", []),
        "tasks.www": (["10.112.0.2"], "", []),  # an alias's too, as libnetwork's
    }
    blue = next(m for m in node_overlays("n2", maps, members) if m.network.id == "blue")
    assert {n.name: list(n.addresses) for n in blue.names} == {
        "db": ["10.112.1.2"],  # dnsrr: the tasks themselves
        "tasks.db": ["10.112.1.2"],
    }


def test_a_standalone_container_is_an_endpoint_and_a_name_on_its_network() -> None:
    nodes = {"n1": node("n1", "192.0.2.1"), "n2": node("n2", "192.0.2.2")}
    services = [service("web", NetworkAttachmentConfig(network_id="red", vip="10.112.0.254"))]
    tasks = [task("t1", "web", "n1", TaskState.RUNNING, ("red", "10.112.0.2"))]
    attached = NetworkAttachmentRecord(
        id="a1",
        network_id="red",
        node_id="n2",
        container_id="c" * 64,
        container_name="probe",
        aliases=["checker"],
        address="10.112.0.253",
    )
    maps, members = overlays({"red": RED}, services, tasks, nodes, [attached])
    assert members == {"n1": frozenset({"red"}), "n2": frozenset({"red"})}  # n2: no task
    (red,) = node_overlays("n1", maps, members)
    assert [(e.address, e.host, e.container_id) for e in red.endpoints] == [
        ("10.112.0.2", "192.0.2.1", ""),
        ("10.112.0.253", "192.0.2.2", "c" * 64),
    ]
    names = {n.name: list(n.addresses) for n in red.names}
    assert names["probe"] == ["10.112.0.253"] and names["checker"] == ["10.112.0.253"]
    assert names["web"] == ["10.112.0.254"]  # the service is still its VIP there
