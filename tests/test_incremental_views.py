"""The structures patched per changed task equal a full recompute from every task, over
random sequences of task puts and removals fed through the cluster view: the network
map's names and overlays (NetworkMapper), and the assigner's per-node keys with the
nodes it is told to look at; the scheduler's holders of each node's resources."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dockyard.common.states import TaskState
from dockyard.controller.assignment_keys import AssignmentKeys, full_keys
from dockyard.controller.assignments import _to_start, assigned_to_agent
from dockyard.controller.network_map import NetworkMapper
from dockyard.controller.overlay_map import overlays
from dockyard.controller.scheduler.holders import Holders, full_holders
from dockyard.controller.scheduler.nodeinfo import NodeInfo
from dockyard.controller.service_names import full_names
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NETWORKS, NODES, SERVICES, TASKS
from dockyard.v1.networks_pb2 import Network
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task

SETTINGS = settings(max_examples=200, deadline=None, database=None, print_blob=True)
STATES = [s for s in TaskState.values() if s != TaskState.STATE_UNSPECIFIED]
SERVICE_IDS = ["s1", "s2", "s3"]
AUTH_SERVICES = {"s2"}

put_event = st.tuples(
    st.just("put"),
    st.sampled_from([f"t{i}" for i in range(8)]),  # task id
    st.sampled_from(SERVICE_IDS),
    st.sampled_from(["", "n1", "n2", "n3"]),  # node
    st.sampled_from(STATES),
    st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN]),  # desired
    st.sampled_from(["", "10.0.0.2", "10.0.0.3", "10.0.0.4"]),  # address
    st.booleans(),  # on the overlay network
    st.integers(min_value=1, max_value=2),  # spec version
)
remove_event = st.tuples(st.just("remove"), st.sampled_from([f"t{i}" for i in range(8)]))
step_event = st.one_of(  # one field of a task moves on, the rest stays
    st.tuples(st.just("status"), st.sampled_from(STATES)),
    st.tuples(st.just("desired"), st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN])),
    st.tuples(st.just("version"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("node"), st.sampled_from(["", "n1", "n2"])),
    st.tuples(st.just("address"), st.sampled_from(["", "10.0.0.2", "10.0.0.5"])),
).map(lambda change: ("step", *change))
events = st.lists(st.one_of(put_event, remove_event, step_event, st.just(("look",))), max_size=40)


def cluster() -> ClusterState:
    state = ClusterState(store=None)  # type: ignore[arg-type]  # nothing here reads etcd
    state._put(NETWORKS, state.networks, "net", Network(id="net"))
    for service_id in SERVICE_IDS:
        service = Service(id=service_id)
        service.spec.name = f"web-{service_id}"
        service.spec.task.networks.add(network_id="net")
        service.registry_auth = "with-auth" if service_id in AUTH_SERVICES else ""
        state._put(SERVICES, state.services, service_id, service)
    for node_id in ("n1", "n2", "n3"):
        node = Node(id=node_id)
        node.network.address = f"192.168.0.{node_id[1]}"
        state._put(NODES, state.nodes, node_id, node)
    return state


def task(event: tuple[object, ...]) -> Task:
    _, task_id, service_id, node_id, state, desired, address, networked, version = event
    record = Task(id=str(task_id), service_id=str(service_id), node_id=str(node_id))
    record.status.state = state  # type: ignore[assignment]
    record.desired_state = desired  # type: ignore[assignment]
    record.status.address = str(address)
    record.spec_version = int(str(version))
    if networked:
        record.networks.add(network_id="net", address=f"10.1.0.{str(task_id)[1:]}")
    return record


def moved_on(old: Task, field: str, value: object) -> Task:
    record = Task()
    record.CopyFrom(old)
    if field == "status":
        record.status.state = value  # type: ignore[assignment]
    elif field == "desired":
        record.desired_state = value  # type: ignore[assignment]
    elif field == "version":
        record.spec_version = int(str(value))
    elif field == "node":
        record.node_id = str(value)
    else:
        record.status.address = str(value)
    return record


def needs_auth(service_id: str) -> bool:
    return service_id in AUTH_SERVICES


def fingerprints(tasks: list[Task]) -> dict[str, frozenset[tuple[str, int, int]]]:
    """Node -> what the assigner compares before sending (assignments._fingerprint):
    the tasks its agent must know with their desired state and spec version, and the
    services whose credentials go along."""
    by_node: dict[str, set[tuple[str, int, int]]] = {}
    for task in tasks:
        if not task.node_id or not assigned_to_agent(task):
            continue
        held = by_node.setdefault(task.node_id, set())
        held.add((task.id, task.desired_state, task.spec_version))
        if _to_start(task) and needs_auth(task.service_id):
            held.add(("auth:" + task.service_id, 0, 0))
    return {node_id: frozenset(held) for node_id, held in by_node.items()}


@SETTINGS
@given(steps=events)
@example(  # a task of a service with credentials starts: they no longer go along
    steps=[
        ("put", "t0", "s2", "n1", TaskState.ASSIGNED, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("step", "status", TaskState.RUNNING),
    ]
)
def test_the_patched_views_equal_a_full_recompute(steps: list[tuple[object, ...]]) -> None:
    state = cluster()
    mapper = NetworkMapper(state, post=lambda node_id, message: True, sessions=lambda: ())
    keys = AssignmentKeys(state.tasks, needs_auth)
    keys.reset()
    holders = Holders(state.tasks)
    holders.reset()
    tracker = state.track(task_ids=True)
    seen = full_keys(state.tasks.values(), needs_auth)
    sent = fingerprints(list(state.tasks.values()))
    held = full_holders(state.tasks.values())
    for step in [*steps, ("look",)]:
        if step[0] == "put":
            record = task(step)
            state._put(TASKS, state.tasks, record.id, record)
        elif step[0] == "remove":
            state._remove(TASKS, state.tasks, str(step[1]))
        elif step[0] == "step" and state.tasks:
            record = moved_on(state.tasks[sorted(state.tasks)[0]], str(step[1]), step[2])
            state._put(TASKS, state.tasks, record.id, record)
        else:
            services, tasks = state.services.values(), state.tasks.values()
            assert mapper._current_names() == full_names(services, tasks)
            assert mapper._current_overlays() == overlays(
                state.networks, services, tasks, state.nodes
            )
            changed = tracker.take().task_ids or set()
            dirty = keys.update(changed)
            rebuilt = holders.update(changed)
            full_held = full_holders(tasks)
            assert holders.by_node == full_held
            for node_id, node in state.nodes.items():  # what a rebuilt NodeInfo holds
                info = NodeInfo.from_node(node, state.tasks_of_node(node_id))
                assert set(info.tasks) == holders.by_node.get(node_id, set())
            assert rebuilt == {
                n for n in set(full_held) | set(held) if full_held.get(n) != held.get(n)
            }
            held = full_held
            full = full_keys(tasks, needs_auth)
            assert keys.by_node == full
            moved = {n for n in set(full) | set(seen) if full.get(n) != seen.get(n)}
            assert dirty >= moved
            now = fingerprints(list(tasks))
            assert dirty >= {n for n in set(now) | set(sent) if now.get(n) != sent.get(n)}
            seen, sent = full, now


def test_a_task_reaching_running_changes_the_names_but_not_its_nodes_keys() -> None:
    state = cluster()
    mapper = NetworkMapper(state, post=lambda node_id, message: True, sessions=lambda: ())
    keys = AssignmentKeys(state.tasks, needs_auth)
    keys.reset()
    tracker = state.track(task_ids=True)
    step = ("put", "t1", "s1", "n1", TaskState.ASSIGNED, TaskState.RUNNING, "10.0.0.2", False, 1)
    state._put(TASKS, state.tasks, "t1", task(step))
    assert keys.update(tracker.take().task_ids or ()) == {"n1"}
    assert dict(mapper._current_names())["web-s1"] == ()
    running = task((*step[:4], TaskState.RUNNING, *step[5:]))
    state._put(TASKS, state.tasks, "t1", running)
    assert keys.update(tracker.take().task_ids or ()) == set()
    assert dict(mapper._current_names())["web-s1"] == ("10.0.0.2",)
