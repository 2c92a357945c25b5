"""Which nodes the assignment set names as sources of an image's layers."""

from __future__ import annotations

from typing import Any

from dockyard.controller.image_sources import (
    CANDIDATES,
    MAX_SOURCES,
    Holders,
    image_sources,
    reachable_api_address,
)
from dockyard.controller.state import ClusterState
from dockyard.v1.types_pb2 import Node, NodeStatus, TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

State = TaskStatus.State
IMAGE = "registry:5000/app@sha256:" + "a" * 64


def cluster(nodes: dict[str, tuple[str, str, NodeStatus.State.ValueType]]) -> ClusterState:
    """``nodes``: name -> (runtime, api_address, state); session address 10.0.0.<n>."""
    state = ClusterState(store=None)  # type: ignore[arg-type]
    for i, (name, (runtime, api, node_state)) in enumerate(sorted(nodes.items()), 1):
        node = Node(id=name)
        node.description.runtime, node.description.api_address = runtime, api
        node.status.state = node_state
        node.network.address = f"10.0.0.{i}"
        state.nodes[name] = node
    return state


def add_task(
    state: ClusterState,
    task_id: str,
    node_id: str,
    task_state: Any,
    image: str = IMAGE,
    service_id: str = "web",
) -> Task:
    task = Task(id=task_id, node_id=node_id, service_id=service_id, desired_state=State.RUNNING)
    task.spec.container.image = image
    task.status.state = task_state
    state.tasks[task_id] = task
    state.tasks_by_service[service_id].add(task_id)
    state.tasks_by_node[node_id].add(task_id)
    return task


READY = NodeStatus.State.READY
DOWN = NodeStatus.State.DOWN


def test_nodes_running_the_image_are_named_for_a_task_that_has_yet_to_start() -> None:
    state = cluster(
        {
            "a": ("runc", "10.0.0.1:7401", READY),
            "b": ("runc", "0.0.0.0:7401", READY),
            "new": ("runc", "10.0.0.3:7401", READY),
        }
    )
    add_task(state, "t1", "a", State.RUNNING)
    add_task(state, "t2", "b", State.RUNNING)
    starting = add_task(state, "t3", "new", State.ASSIGNED)
    [sources] = image_sources(state, "new", [starting])
    assert sources.image == IMAGE
    # b listens on 0.0.0.0: it is reached at the address its session came from
    assert sorted(sources.api_addresses) == ["10.0.0.1:7401", "10.0.0.2:7401"]


def test_only_ready_runc_nodes_with_a_running_task_of_the_same_image_count() -> None:
    state = cluster(
        {
            "down": ("runc", "10.0.0.1:7401", DOWN),
            "docker": ("docker", "10.0.0.2:7401", READY),
            "pulling": ("runc", "10.0.0.3:7401", READY),
            "other": ("runc", "10.0.0.4:7401", READY),
            "new": ("runc", "10.0.0.5:7401", READY),
        }
    )
    add_task(state, "t1", "down", State.RUNNING)
    add_task(state, "t2", "docker", State.RUNNING)
    add_task(state, "t3", "pulling", State.PREPARING)
    add_task(state, "t4", "other", State.RUNNING, image="registry:5000/app:v2")
    starting = add_task(state, "t5", "new", State.ASSIGNED)
    assert image_sources(state, "new", [starting]) == []


def test_a_running_task_needs_no_sources_and_its_own_node_is_never_one() -> None:
    state = cluster({"a": ("runc", "10.0.0.1:7401", READY)})
    running = add_task(state, "t1", "a", State.RUNNING)
    starting = add_task(state, "t2", "a", State.ASSIGNED)
    assert image_sources(state, "a", [running, starting]) == []


def test_another_service_of_the_same_image_is_a_source() -> None:
    state = cluster({"a": ("runc", "10.0.0.1:7401", READY), "new": ("runc", "h:7401", READY)})
    other = Service(id="api")
    other.spec.task.container.image = IMAGE
    state.services["api"] = other
    add_task(state, "t1", "a", State.RUNNING, service_id="api")
    starting = add_task(state, "t2", "new", State.ASSIGNED, service_id="web")
    [sources] = image_sources(state, "new", [starting])
    assert list(sources.api_addresses) == ["10.0.0.1:7401"]


def test_at_most_a_few_sources_each_fetching_node_in_its_own_order() -> None:
    names = {f"h{i}": ("runc", f"10.1.0.{i}:7401", READY) for i in range(10)}
    fetchers = {f"new{i}": ("runc", f"10.2.0.{i}:7401", READY) for i in range(10)}
    state = cluster(names | fetchers)
    for i in range(10):
        add_task(state, f"t{i}", f"h{i}", State.RUNNING)
    firsts = set()
    for name in fetchers:
        starting = add_task(state, f"s-{name}", name, State.ASSIGNED)
        [sources] = image_sources(state, name, [starting])
        assert len(sources.api_addresses) == MAX_SOURCES
        firsts.add(sources.api_addresses[0])
    assert len(firsts) > 1  # a fleet does not queue on one holder


def test_reachable_api_address() -> None:
    node = Node()
    node.network.address = "192.0.2.7"
    for api, expected in (
        ("10.0.0.1:7401", "10.0.0.1:7401"),
        ("0.0.0.0:7401", "192.0.2.7:7401"),
        ("[::]:7401", "192.0.2.7:7401"),
        ("host.example:7401", "host.example:7401"),
        ("", ""),
        ("10.0.0.1", ""),
    ):
        node.description.api_address = api
        assert reachable_api_address(node) == expected, api
    node.network.address = ""
    node.description.api_address = "0.0.0.0:7401"
    assert reachable_api_address(node) == ""


def test_a_node_that_pulls_by_itself_gets_no_sources() -> None:
    state = cluster(
        {
            "a": ("runc", "10.0.0.1:7401", READY),
            "engine": ("docker", "10.0.0.2:7401", READY),
            "sim": ("hollow", "10.0.0.3:7401", READY),
        }
    )
    add_task(state, "t1", "a", State.RUNNING)
    for name in ("engine", "sim"):
        starting = add_task(state, f"s-{name}", name, State.ASSIGNED)
        assert image_sources(state, name, [starting]) == []


def test_one_round_looks_for_an_images_holders_once_and_stops_early() -> None:
    state = cluster(
        {f"h{i:02}": ("runc", f"10.1.0.{i}:7401", READY) for i in range(40)}
        | {"new1": ("runc", "h1:7401", READY), "new2": ("runc", "h2:7401", READY)}
    )
    for i in range(40):
        add_task(state, f"t{i}", f"h{i:02}", State.RUNNING)
    cache: dict[str, Holders] = {}
    first = image_sources(state, "new1", [add_task(state, "s1", "new1", State.ASSIGNED)], cache)
    assert len(cache[IMAGE]) == CANDIDATES + 1  # not all 40
    state.tasks.clear()  # the second node of the round uses what the first found
    second = image_sources(state, "new2", [add_task(state, "s2", "new2", State.ASSIGNED)], cache)
    assert len(first[0].api_addresses) == len(second[0].api_addresses) == MAX_SOURCES
