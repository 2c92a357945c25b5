"""Properties of the orchestrator's skip after its own writes (orchestrators/settled.py):
a plan that only creates tasks, applied whole, leaves nothing to plan (for replicated,
global and job services, from any set of tasks); and the skip ends as soon as anything
but those creates changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.global_mode import reconcile_global
from dockyard.controller.orchestrators.jobs import reconcile_job
from dockyard.controller.orchestrators.plan import Plan
from dockyard.controller.orchestrators.reaper import plan_reaping
from dockyard.controller.orchestrators.replicated import reconcile_replicated
from dockyard.controller.orchestrators.settled import created_only, node_key, own_writes_only
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.controller.server import _eligible
from dockyard.v1.types_pb2 import NodeSpec
from dockyard.v1.workloads_pb2 import RestartPolicy, Service, Task, UpdateStatus

from .helpers import NOW, applied, node, service
from .test_convergence import GLOBAL_NODES, NODES, build, task_facts
from .test_global_and_jobs import job, make_global

SETTINGS = settings(max_examples=300, deadline=None, database=None, print_blob=True)
UPDATE_STATES = [
    UpdateStatus.STATE_UNSPECIFIED,
    UpdateStatus.COMPLETED,
    UpdateStatus.UPDATING,
    UpdateStatus.PAUSED,
    UpdateStatus.ROLLBACK_STARTED,
]


def plan_for(svc: Service, tasks: list[Task], now: float) -> Plan:
    """What Orchestrator._plan does for one service."""
    mode = svc.spec.WhichOneof("mode")
    if mode == "global":
        plan = reconcile_global(svc, tasks, GLOBAL_NODES, now, 10.0, UpdateProgress(), _eligible)
    elif mode == "job":
        plan = reconcile_job(svc, tasks, NODES, now, 10.0)
    else:
        plan = reconcile_replicated(svc, tasks, NODES, now, 10.0, UpdateProgress())
    plan_reaping(tasks, plan)
    return plan


def written(plan: Plan, version: int) -> Plan:
    """The plan as the store wrote it: each create stamped with its record's meta."""
    for task in plan.creates:
        task.meta.version = version
        task.meta.created_at.FromNanoseconds(int(NOW * 1e9))
    return plan


@SETTINGS
@given(
    facts=st.lists(task_facts, max_size=12),
    mode=st.sampled_from(["replicated", "global", "job"]),
    count=st.integers(min_value=0, max_value=5),
    version=st.integers(min_value=1, max_value=2),
    update_state=st.sampled_from(UPDATE_STATES),
)
def test_a_creates_only_plan_written_whole_leaves_nothing_to_plan(
    facts: list[tuple[int, int, int, str, int, int]],
    mode: str,
    count: int,
    version: int,
    update_state: int,
) -> None:
    if mode == "global":
        svc = make_global()
    elif mode == "job":
        svc = job(max(1, count), 2, backoff_limit=3)
    else:
        svc = service(count)
    svc.spec.task.restart_policy.condition = RestartPolicy.ANY
    svc.spec_version = version
    svc.update_status.state = update_state  # type: ignore[assignment]
    svc.update_status.started_at.FromNanoseconds(int((NOW - 500) * 1e9))
    tasks = build(facts, version)
    plan = written(plan_for(svc, tasks, NOW), 9)
    created = created_only(svc, plan, written=True)
    if created is None:
        return
    after = applied(tasks, plan)
    again = plan_for(svc, after, NOW)
    assert (again.creates, again.updates, again.deletes, again.service) == ([], [], [], None)
    new_ids = [t.id for t in plan.creates]
    assert own_writes_only(created, svc, new_ids, {t.id: t for t in after})


def test_only_a_creates_only_plan_written_whole_is_settled() -> None:
    svc = service(2)
    plan = plan_for(svc, [], NOW)
    assert len(plan.creates) == 2
    assert created_only(svc, plan, written=True) is not None
    assert created_only(svc, plan, written=False) is None  # a create lost a race
    plan.service = svc
    assert created_only(svc, plan, written=True) is None


def test_the_skip_ends_when_anything_but_the_creates_changed() -> None:
    svc = service(2)
    plan = written(plan_for(svc, [], NOW), 9)
    created = created_only(svc, plan, written=True)
    assert created is not None
    tasks = {t.id: t for t in plan.creates}
    first, second = plan.creates
    assert own_writes_only(created, svc, [first.id, second.id], tasks)

    placed = Task()
    placed.CopyFrom(first)
    placed.node_id = "a"
    placed.status.state = TaskState.RUNNING
    assert own_writes_only(created, svc, [first.id], {**tasks, first.id: placed})

    for change in ("failed", "shut down", "unknown task", "gone", "service"):
        now_tasks = dict(tasks)
        current = svc
        changed = [first.id]
        other = Task()
        other.CopyFrom(first)
        if change == "failed":
            other.status.state = TaskState.FAILED
            now_tasks[first.id] = other
        elif change == "shut down":
            other.desired_state = TaskState.SHUTDOWN
            now_tasks[first.id] = other
        elif change == "unknown task":
            other.id = "someone-else"
            now_tasks[other.id] = other
            changed = [other.id]
        elif change == "gone":
            del now_tasks[first.id]
        else:
            current = Service()
            current.CopyFrom(svc)
            current.meta.version += 1
        assert not own_writes_only(created, current, changed, now_tasks), change


def test_a_persisted_heartbeat_does_not_change_what_planning_reads_of_a_node() -> None:
    before = node("a")
    beat = node("a")
    beat.status.last_heartbeat.FromNanoseconds(int(NOW * 1e9))
    beat.meta.version = 7
    assert node_key(beat) == node_key(before)
    drained = node("a", availability=NodeSpec.DRAIN)
    assert node_key(drained) != node_key(before)


def test_a_reconnection_does_not_change_what_planning_reads_of_a_node() -> None:
    """A new term closes every session; each agent's next one registers from a new
    port. Planning never reads it: 1,000 reconnections must not re-plan every service."""
    before = node("a")
    before.status.remote_address = "ipv4:10.0.0.5:40112"
    again = node("a")
    again.status.remote_address = "ipv4:10.0.0.5:51877"
    assert node_key(again) == node_key(before)
    moved = node("a")
    moved.status.message = "node is down"
    assert node_key(moved) != node_key(before)
