"""Properties of every batch decision, checked over generated clusters and tasks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.controller.scheduler import NodeInfo, Scheduler, SchedulingResult, parse_constraints
from dockyard.v1.workloads_pb2 import Task

from .helpers import GIB, make_info, make_task

SETTINGS = settings(max_examples=100, deadline=None)
ZONES = ["a", "b", "c"]
strategies = st.sampled_from(["spread", "binpack"])


@st.composite
def clusters(draw: st.DrawFn, min_nodes: int = 0) -> list[NodeInfo]:
    n = draw(st.integers(min_nodes, 8))
    infos = []
    for i in range(n):
        labels = {}
        zone = draw(st.sampled_from([*ZONES, None]))
        if zone is not None:
            labels["zone"] = zone
        existing = [
            make_task(f"e{i}-{j}", "old", cpus=c, memory=m * GIB, ports=p)
            for j, (c, m, p) in enumerate(
                draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from([0, 0.5, 1]),
                            st.integers(0, 2),
                            st.sampled_from([[], [80], [443]]),
                        ),
                        max_size=3,
                    )
                )
            )
        ]
        infos.append(
            make_info(
                f"n{i}",
                existing,
                cpus=draw(st.sampled_from([1, 2, 4])),
                memory=draw(st.integers(1, 8)) * GIB,
                labels=labels,
                ready=draw(st.booleans() | st.just(True)),
            )
        )
    return infos


@st.composite
def batches(draw: st.DrawFn) -> list[Task]:
    tasks: list[Task] = []
    for s in range(draw(st.integers(1, 3))):
        spec = {
            "cpus": draw(st.sampled_from([0, 0.5, 1, 2])),
            "memory": draw(st.sampled_from([0, GIB // 2, GIB, 3 * GIB])),
            "constraints": draw(
                st.lists(
                    st.sampled_from(
                        [
                            "node.labels.zone==a",
                            "node.labels.zone!=b",
                            "node.id!=n0",
                            "node.platform.os==linux",
                        ]
                    ),
                    max_size=2,
                )
            ),
            "max_replicas": draw(st.integers(0, 3)),
            "ports": draw(st.sampled_from([[], [80], [8080]])),
            "spread": draw(st.sampled_from([[], ["node.labels.zone"]])),
        }
        count = draw(st.integers(1, 12))
        tasks += [make_task(f"s{s}-{i}", f"svc{s}", **spec) for i in range(count)]  # type: ignore[arg-type]
    return tasks


def placed(result: SchedulingResult, tasks: Iterable[Task]) -> list[tuple[Task, NodeInfo]]:
    return [
        (t, result.nodes[result.assignments[t.id]]) for t in tasks if t.id in result.assignments
    ]


@SETTINGS
@given(clusters(), batches(), strategies)
def test_every_task_is_decided_once_and_nothing_over_committed(
    infos: list[NodeInfo], tasks: list[Task], strategy: str
) -> None:
    result = Scheduler(strategy).schedule(infos, tasks)  # type: ignore[arg-type]
    assert set(result.assignments) | set(result.pending) == {t.id for t in tasks}
    assert not set(result.assignments) & set(result.pending)
    for task, info in placed(result, tasks):
        if task.spec.resources.reservations.ByteSize():  # it needed room: the node still fits
            assert info.reserved.fits_in(info.total), (info.reserved, info.total)


@SETTINGS
@given(clusters(), batches(), strategies)
def test_constraints_hold_and_nodes_are_ready_and_limits_kept(
    infos: list[NodeInfo], tasks: list[Task], strategy: str
) -> None:
    result = Scheduler(strategy).schedule(infos, tasks)  # type: ignore[arg-type]
    for task, info in placed(result, tasks):
        assert info.ready and info.active
        for constraint in parse_constraints(task.spec.placement.constraints):
            assert constraint.matches(info.node), (constraint.text, info.node.spec.labels)
        limit = task.spec.placement.max_replicas_per_node
        if limit:
            assert info.tasks_of(task.service_id) <= limit
    for info in result.nodes.values():  # a host port is used by one task at most
        ports = Counter(
            (p.protocol, p.published_port)
            for t in info.tasks.values()
            for p in t.spec.ports
            if t.service_id != "old"
        )
        old = {
            (p.protocol, p.published_port)
            for t in info.tasks.values()
            for p in t.spec.ports
            if t.service_id == "old"
        }
        assert all(count == 1 for count in ports.values())
        assert not set(ports) & old


@SETTINGS
@given(st.integers(1, 30), st.integers(0, 120), st.booleans())
def test_spread_is_even_within_one_task_per_node(n_nodes: int, n_tasks: int, busy: bool) -> None:
    infos = [
        make_info(f"n{i}", [make_task(f"o{i}-{j}", "other") for j in range(i % 3 if busy else 0)])
        for i in range(n_nodes)
    ]
    result = Scheduler().schedule(infos, [make_task(f"t{i}") for i in range(n_tasks)])
    assert len(result.assignments) == n_tasks
    counts = Counter(result.assignments.values())
    per_node = [counts.get(info.id, 0) for info in infos]
    assert max(per_node) - min(per_node) <= 1


@SETTINGS
@given(
    st.lists(st.sampled_from([*ZONES, None]), min_size=1, max_size=20),
    st.integers(0, 100),
    strategies,
)
def test_preference_spread_balances_zones_within_one(
    zones: list[str | None], n_tasks: int, strategy: str
) -> None:
    infos = [make_info(f"n{i}", labels={"zone": z} if z else {}) for i, z in enumerate(zones)]
    tasks = [make_task(f"t{i}", spread=["node.labels.zone"]) for i in range(n_tasks)]
    result = Scheduler(strategy).schedule(infos, tasks)  # type: ignore[arg-type]
    assert len(result.assignments) == n_tasks
    per_zone = Counter(
        result.nodes[node].node.spec.labels.get("zone", "") for node in result.assignments.values()
    )
    values = [per_zone.get(z or "", 0) for z in set(zones)]
    assert max(values) - min(values) <= 1


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 4), st.integers(0, 60), strategies)
def test_max_replicas_per_node_is_never_exceeded(
    n_nodes: int, limit: int, n_tasks: int, strategy: str
) -> None:
    infos = [make_info(f"n{i}", cpus=64, memory=64 * GIB) for i in range(n_nodes)]
    tasks = [make_task(f"t{i}", max_replicas=limit, cpus=0.5) for i in range(n_tasks)]
    result = Scheduler(strategy).schedule(infos, tasks)  # type: ignore[arg-type]
    counts = Counter(result.assignments.values())
    assert all(count <= limit for count in counts.values())
    assert len(result.assignments) == min(n_tasks, n_nodes * limit)
    assert all(info.reserved.nano_cpus <= info.total.nano_cpus for info in result.nodes.values())
