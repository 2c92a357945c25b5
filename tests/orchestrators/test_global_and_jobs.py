"""Global services follow nodes; jobs run to their completions."""

from __future__ import annotations

from dockyard.common.states import TaskState
from dockyard.controller.orchestrators.global_mode import reconcile_global
from dockyard.controller.orchestrators.jobs import reconcile_job
from dockyard.controller.orchestrators.updater import UpdateProgress
from dockyard.controller.server import _eligible
from dockyard.v1.types_pb2 import NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import Service

from .helpers import NOW, ended, node, running, service


def make_global(*constraints: str) -> Service:
    svc = service(0)
    getattr(svc.spec, "global").SetInParent()
    svc.spec.task.placement.constraints.extend(constraints)
    return svc


def test_global_puts_one_task_on_each_eligible_node() -> None:
    svc = make_global("node.labels.zone==a")
    nodes = {
        n.id: n
        for n in (
            node("a", zone="a"),
            node("b", zone="b"),
            node("c", zone="a"),
            node("d", NodeStatus.DOWN, zone="a"),
            node("e", availability=NodeSpec.PAUSE, zone="a"),
        )
    }
    plan = reconcile_global(svc, [], nodes, NOW, 10.0, UpdateProgress(), _eligible)
    assert sorted(t.node_id for t in plan.creates) == ["a", "c"]
    assert all(t.slot == 0 for t in plan.creates)


def test_global_follows_label_changes_and_drain() -> None:
    svc = make_global("node.labels.zone==a")
    tasks = [running(svc, 0, "a"), running(svc, 0, "b")]
    nodes = {
        n.id: n for n in (node("a", zone="b"), node("b", availability=NodeSpec.DRAIN, zone="a"))
    }
    plan = reconcile_global(svc, tasks, nodes, NOW, 10.0, UpdateProgress(), _eligible)
    assert sorted(t.node_id for t in plan.updates if t.desired_state == TaskState.SHUTDOWN) == [
        "a",
        "b",
    ]
    assert not plan.creates


def job(completions: int, parallelism: int, backoff_limit: int = 0) -> Service:
    svc = service(0)
    svc.spec.ClearField("replicated")
    svc.spec.job.completions = completions
    svc.spec.job.parallelism = parallelism
    svc.spec.job.backoff_limit = backoff_limit
    return svc


def test_a_job_runs_at_most_parallelism_tasks() -> None:
    plan = reconcile_job(job(5, 2), [], {}, NOW, 10.0)
    assert sorted(t.slot for t in plan.creates) == [1, 2]


def test_a_job_completes_when_every_slot_succeeded() -> None:
    svc = job(2, 2)
    tasks = [ended(running(svc, slot, "a"), TaskState.COMPLETE) for slot in (1, 2)]
    plan = reconcile_job(svc, tasks, {"a": node("a")}, NOW, 10.0)
    assert not plan.creates
    assert plan.service is not None
    assert plan.service.job_status.succeeded == 2 and plan.service.job_status.complete


def test_a_job_retries_failures_up_to_the_backoff_limit() -> None:
    svc = job(1, 1, backoff_limit=1)
    first = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1)
    plan = reconcile_job(svc, [first], {"a": node("a")}, NOW, 10.0)
    assert [t.slot for t in plan.creates] == [1]
    second = ended(running(svc, 1, "a"), TaskState.FAILED, exit_code=1)
    second.id = "second"
    plan = reconcile_job(svc, [first, second], {"a": node("a")}, NOW, 10.0)
    assert not plan.creates
    assert plan.service is not None and plan.service.job_status.failed == 2
    assert plan.service.job_status.complete
