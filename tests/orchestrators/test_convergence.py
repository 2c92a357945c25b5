"""Properties: from any set of tasks (random slots, states, duplicates, nodes),
applying the plan again and again ends with exactly the desired replicas, one
live task per slot (global: per eligible node), and never shuts down the task
that survives; a job never runs more than its parallelism nor a slot twice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.global_mode import reconcile_global
from dockyard.controller.orchestrators.jobs import reconcile_job
from dockyard.controller.orchestrators.reaper import plan_reaping
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.controller.server import _eligible
from dockyard.v1.types_pb2 import NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import RestartPolicy, Task

from .helpers import NOW, applied, is_live, node, running, service
from .test_global_and_jobs import job, make_global

SETTINGS = settings(max_examples=150, deadline=None, database=None, print_blob=True)
NODES = {n.id: n for n in (node("a"), node("b"), node("c"), node("d", availability=NodeSpec.DRAIN))}
STATES = [s for s in TaskState.values() if s != TaskState.STATE_UNSPECIFIED]

task_facts = st.tuples(
    st.integers(min_value=0, max_value=7),  # slot
    st.sampled_from(STATES),  # observed state
    st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN]),  # desired state
    st.sampled_from(["a", "b", "c", "d", "gone", ""]),  # node
    st.integers(min_value=1, max_value=2),  # spec version
    st.integers(min_value=0, max_value=1000),  # created, seconds before NOW
)


def build(facts: list[tuple[int, int, int, str, int, int]], version: int) -> list[Task]:
    svc = service(1)
    tasks = []
    for i, (slot, state, desired, node_id, spec_version, age) in enumerate(facts):
        task = running(svc, slot, node_id or "a", at=NOW - age)
        task.id = f"task{i:03d}"
        task.node_id = node_id
        task.status.state = state  # type: ignore[assignment]
        task.desired_state = desired  # type: ignore[assignment]
        task.spec_version = spec_version
        task.observed_at.FromNanoseconds(int((NOW - age) * 1e9))
        task.meta.created_at.FromNanoseconds(int((NOW - age) * 1e9))
        tasks.append(task)
    return tasks


def live_by_slot(tasks: list[Task]) -> dict[int, list[str]]:
    slots: dict[int, list[str]] = {}
    for task in tasks:
        if is_live(task):
            slots.setdefault(task.slot, []).append(task.id)
    return slots


@SETTINGS
@given(
    facts=st.lists(task_facts, max_size=14),
    replicas=st.integers(min_value=0, max_value=5),
    version=st.integers(min_value=1, max_value=2),
)
def test_the_replicated_plan_converges_to_one_live_task_per_slot(
    facts: list[tuple[int, int, int, str, int, int]], replicas: int, version: int
) -> None:
    svc = service(
        replicas,
        task__restart_policy__condition=RestartPolicy.ANY,
        task__restart_policy__delay_seconds=0.0,
    )
    svc.spec_version = version
    tasks = build(facts, version)
    now = NOW
    progress = UpdateProgress()
    survivors: dict[int, str] = {}
    for _ in range(6):
        plan = reconcile_replicated(svc, tasks, NODES, now, 10.0, progress)
        plan_reaping(tasks, plan)
        before = live_by_slot(tasks)
        tasks = applied(tasks, plan)
        after = live_by_slot(tasks)
        for slot, ids in after.items():
            assert len(ids) == 1, f"slot {slot} has {ids} live after a round"
        for slot, survivor in survivors.items():
            if slot <= replicas:
                assert after.get(slot) == [survivor], f"slot {slot}: survivor shut down"
        survivors = {slot: ids[0] for slot, ids in after.items()}
        for slot in before:
            if 1 <= slot <= replicas and slot not in after:
                # Only a task on a lost, drained or ended node may leave its slot empty.
                gone = [t for t in tasks if t.id in before[slot]]
                assert all(t.node_id in ("d", "gone") for t in gone)
        if plan.is_empty():
            if plan.wake_at is None:
                break
            now = max(now, plan.wake_at)
    assert sorted(live_by_slot(tasks)) == list(range(1, replicas + 1))
    assert reconcile_replicated(svc, tasks, NODES, now, 10.0, progress).is_empty()


GLOBAL_NODES = {
    n.id: n
    for n in (
        node("a"),
        node("b"),
        node("c"),
        node("d", availability=NodeSpec.DRAIN),
        node("e", NodeStatus.DOWN, down_since=NOW - 100),
    )
}

global_facts = st.tuples(
    st.sampled_from(STATES),
    st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN]),
    st.sampled_from(["a", "b", "c", "d", "e", "gone", ""]),
    st.integers(min_value=1, max_value=2),
    st.integers(min_value=0, max_value=1000),
)


def live_by_node(tasks: list[Task]) -> dict[str, list[str]]:
    nodes: dict[str, list[str]] = {}
    for task in tasks:
        if is_live(task):
            nodes.setdefault(task.node_id, []).append(task.id)
    return nodes


@SETTINGS
@given(facts=st.lists(global_facts, max_size=14), version=st.integers(min_value=1, max_value=2))
def test_the_global_plan_converges_to_one_live_task_per_eligible_node(
    facts: list[tuple[int, int, str, int, int]], version: int
) -> None:
    svc = make_global()
    svc.spec.task.restart_policy.condition = RestartPolicy.ANY
    svc.spec_version = version
    tasks = build([(0, *f) for f in facts], version)
    now = NOW
    survivors: dict[str, str] = {}
    for _ in range(6):
        plan = reconcile_global(svc, tasks, GLOBAL_NODES, now, 10.0, UpdateProgress(), _eligible)
        plan_reaping(tasks, plan)
        tasks = applied(tasks, plan)
        after = live_by_node(tasks)
        for node_id, ids in after.items():
            assert len(ids) == 1, f"node {node_id!r} has {ids} live after a round"
        for node_id, survivor in survivors.items():
            assert after.get(node_id) == [survivor], f"node {node_id}: survivor shut down"
        survivors = {node_id: ids[0] for node_id, ids in after.items()}
        if plan.is_empty():
            if plan.wake_at is None:
                break
            now = max(now, plan.wake_at)
    assert sorted(live_by_node(tasks)) == ["a", "b", "c"]


@SETTINGS
@given(
    facts=st.lists(task_facts, max_size=14),
    completions=st.integers(min_value=1, max_value=5),
    parallelism=st.integers(min_value=1, max_value=3),
)
def test_a_job_never_runs_more_than_parallelism_or_a_slot_twice(
    facts: list[tuple[int, int, int, str, int, int]], completions: int, parallelism: int
) -> None:
    svc = job(completions, parallelism, backoff_limit=100)
    tasks = build(facts, 1)
    for _ in range(4):
        plan = reconcile_job(svc, tasks, NODES, NOW, 10.0)
        plan_reaping(tasks, plan)
        tasks = applied(tasks, plan)
        succeeded = {
            t.slot
            for t in tasks
            if t.status.state == TaskState.COMPLETE and t.status.exit_code == 0
        }
        live = [t for t in tasks if is_live(t)]
        assert len(live) <= parallelism
        assert len({t.slot for t in live}) == len(live)
        assert all(1 <= t.slot <= completions and t.slot not in succeeded for t in live)
