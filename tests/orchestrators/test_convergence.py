"""Property: from any set of tasks (random slots, states, duplicates, nodes),
applying the replicated plan again and again ends with exactly the desired
replicas, one live task per slot, and never shuts down a slot's last live task."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.controller.orchestrators.reaper import plan_reaping
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.tasks import State, is_live
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.v1.types_pb2 import NodeSpec
from dockyard.v1.workloads_pb2 import RestartPolicy, Task

from .helpers import NOW, applied, node, running, service

SETTINGS = settings(max_examples=150, deadline=None, database=None, print_blob=True)
NODES = {n.id: n for n in (node("a"), node("b"), node("c"), node("d", availability=NodeSpec.DRAIN))}
STATES = [s for s in State.values() if s != State.STATE_UNSPECIFIED]

task_facts = st.tuples(
    st.integers(min_value=0, max_value=7),  # slot
    st.sampled_from(STATES),  # observed state
    st.sampled_from([State.RUNNING, State.SHUTDOWN]),  # desired state
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
