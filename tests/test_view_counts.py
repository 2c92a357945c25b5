"""The cluster view's running counts (what `service ls` and `info` read instead of a
scan of every task) and what marks a service for the orchestrator."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.controller.state import ClusterState
from dockyard.controller.store import (
    CONFIGS,
    NETWORK_ATTACHMENTS,
    NETWORKS,
    NODES,
    SECRETS,
    SERVICES,
    TASKS,
)
from dockyard.v1.networks_pb2 import Network, NetworkAttachmentRecord
from dockyard.v1.types_pb2 import Node, TaskStatus
from dockyard.v1.workloads_pb2 import Config, Secret, Service, Task, UpdateStatus


def view() -> ClusterState:
    return ClusterState(store=None)  # type: ignore[arg-type]  # nothing here reads etcd


def task(task_id: str, state: int, service_id: str = "s1", node_id: str = "") -> Task:
    record = Task(id=task_id, service_id=service_id, node_id=node_id)
    record.desired_state = TaskStatus.RUNNING
    record.status.state = state  # type: ignore[assignment]
    record.observed_at.FromSeconds(1)
    return record


def put(state: ClusterState, record: Any) -> None:
    kind, table = (TASKS, state.tasks) if isinstance(record, Task) else (SERVICES, state.services)
    state._put(kind, table, record.id, record)


def test_counts_follow_every_change_of_a_task() -> None:
    state = view()
    put(state, Service(id="s1"))
    put(state, task("t1", TaskStatus.PENDING))
    put(state, task("t2", TaskStatus.PENDING))
    assert (state.task_counts["wanted"], state.task_counts["pending"]) == (2, 2)
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert state.task_counts["running"] == 1 and state.running_by_service["s1"] == 1
    ended = task("t1", TaskStatus.COMPLETE, node_id="n1")
    ended.desired_state = TaskStatus.SHUTDOWN
    put(state, ended)
    assert state.task_counts["running"] == 0 and state.running_by_service["s1"] == 0
    assert state.succeeded_by_service["s1"] == 1
    state._remove(TASKS, state.tasks, "t1")
    state._remove(TASKS, state.tasks, "t2")
    assert state.succeeded_by_service["s1"] == 0
    assert +state.task_counts == {}  # every count back to zero


def test_a_live_status_step_does_not_wake_the_orchestrator() -> None:
    state = view()
    put(state, Service(id="s1"))
    put(state, task("t1", TaskStatus.PENDING))
    orchestrator, others = state.track(status_changes=False), state.track()
    put(state, task("t1", TaskStatus.ASSIGNED, node_id="n1"))  # placed
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert orchestrator.take().services == set()
    assert others.take().services == {"s1"}
    put(state, task("t1", TaskStatus.FAILED, node_id="n1"))  # ended: the orchestrator acts
    assert orchestrator.take().services == {"s1"}
    moved = task("t1", TaskStatus.FAILED, node_id="n2")
    put(state, moved)
    assert orchestrator.take().services == {"s1"}


def test_a_service_being_updated_sees_every_step() -> None:
    state = view()
    updating = Service(id="s1")
    updating.update_status.state = UpdateStatus.UPDATING
    put(state, updating)
    put(state, task("t1", TaskStatus.STARTING, node_id="n1"))
    orchestrator = state.track(status_changes=False)
    put(state, task("t1", TaskStatus.RUNNING, node_id="n1"))
    assert orchestrator.take().services == {"s1"}


STATES = [s for s in TaskStatus.State.values() if s != TaskStatus.STATE_UNSPECIFIED]
task_puts = st.tuples(
    st.just("put"),
    st.sampled_from(["t1", "t2", "t3", "t4"]),
    st.sampled_from(["s1", "s2"]),  # a record may even name another service
    st.sampled_from(["", "n1", "n2"]),  # placed, moved, unplaced
    st.sampled_from(STATES),
    st.sampled_from([TaskStatus.RUNNING, TaskStatus.SHUTDOWN]),
    st.sampled_from([0, 1]),  # exit code
)
task_removals = st.tuples(st.just("remove"), st.sampled_from(["t1", "t2", "t3", "t4"]))


def recomputed(state: ClusterState) -> tuple[Any, ...]:
    """The view's indexes and counts computed again from every task it holds."""
    fresh = view()
    for record in state.tasks.values():
        put(fresh, record)
    return indexes(fresh)


def indexes(state: ClusterState) -> tuple[Any, ...]:
    return (
        {k: v for k, v in state.tasks_by_service.items() if v},
        {k: v for k, v in state.tasks_by_node.items() if v},
        state.pending_task_ids,
        +state.task_counts,
        +state.running_by_service,
        +state.succeeded_by_service,
    )


@given(st.lists(st.one_of(task_puts, task_removals), max_size=40))
@settings(max_examples=300, deadline=None, database=None, print_blob=True)
def test_the_indexes_and_counts_equal_a_recompute(steps: list[tuple[Any, ...]]) -> None:
    """A task's put moves it between the indexes (service, node, pending) and counts as
    its record changes, whatever changed; a removal takes it out of all of them."""
    state = view()
    for step in steps:
        if step[0] == "remove":
            state._remove(TASKS, state.tasks, step[1])
        else:
            _, task_id, service_id, node_id, status, desired, exit_code = step
            record = task(task_id, status, service_id, node_id)
            record.desired_state = desired
            record.status.exit_code = exit_code
            put(state, record)
        assert indexes(state) == recomputed(state)


def test_what_each_kind_of_record_marks() -> None:
    """A service's record marks the service, a node's the node, a task's its service and
    node; secrets, configs, networks and standalone attachments mark nothing."""
    state = view()
    tracker = state.track()
    state._put(SECRETS, state.secrets, "x1", Secret(id="x1"))
    state._put(CONFIGS, state.configs, "c1", Config(id="c1"))
    state._put(NETWORKS, state.networks, "net1", Network(id="net1"))
    state._put(NETWORK_ATTACHMENTS, state.attachments, "a1", NetworkAttachmentRecord(id="a1"))
    seen = tracker.take()
    assert (seen.services, seen.nodes, seen.task_nodes) == (set(), set(), set())
    state._put(NODES, state.nodes, "n1", Node(id="n1"))
    put(state, Service(id="s1"))
    put(state, task("t1", TaskStatus.RUNNING, "s2", "n2"))
    seen = tracker.take()
    assert (seen.services, seen.nodes, seen.task_nodes) == ({"s1", "s2"}, {"n1"}, {"n2"})
