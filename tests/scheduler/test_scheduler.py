"""Placement decisions: spread, bin-pack, preferences, images, batches and reasons."""

from __future__ import annotations

from collections import Counter

import pytest

from dockyard.controller.scheduler import Scheduler, SchedulingResult, group_tasks
from dockyard.v1.types_pb2 import NodeSpec

from .helpers import CPU, GIB, make_info, make_task, make_tasks


def per_node(result: SchedulingResult) -> Counter[str]:
    return Counter(result.assignments.values())


def test_spread_balances_a_service_over_the_nodes() -> None:
    infos = [make_info(f"n{i}") for i in range(4)]
    result = Scheduler().schedule(infos, make_tasks(10))
    assert result.pending == {}
    assert sorted(per_node(result).values()) == [2, 2, 3, 3]


def test_spread_prefers_nodes_without_the_service_then_with_fewer_tasks() -> None:
    busy = make_info("busy", [make_task(f"o{i}", "other") for i in range(3)])
    calm = make_info("calm", [make_task("o9", "other")])
    has_one = make_info("has", [make_task("w0", "web")])
    result = Scheduler().schedule([busy, calm, has_one], make_tasks(2, "web"))
    assert sorted(result.assignments.values()) == ["busy", "calm"]
    first = Scheduler().schedule([busy, calm, has_one], make_tasks(1, "web"))
    assert list(first.assignments.values()) == ["calm"]


def test_binpack_fills_the_fullest_node_that_still_fits() -> None:
    infos = [
        make_info("half", [make_task("x", "other", memory=4 * GIB)], memory=8 * GIB),
        make_info("empty", memory=8 * GIB),
    ]
    result = Scheduler(strategy="binpack").schedule(infos, make_tasks(6, memory=GIB))
    assert per_node(result) == {"half": 4, "empty": 2}
    assert result.nodes["half"].free.memory_bytes == 0


def test_placement_preference_spreads_over_label_values_first() -> None:
    infos = [make_info("a1", labels={"zone": "a"})] + [
        make_info(f"b{i}", labels={"zone": "b"}) for i in range(3)
    ]
    result = Scheduler().schedule(infos, make_tasks(6, spread=["node.labels.zone"]))
    zones = Counter(result.nodes[n].node.spec.labels["zone"] for n in result.assignments.values())
    assert zones == {"a": 3, "b": 3}
    assert per_node(result)["a1"] == 3


def test_preference_counts_the_service_tasks_already_running() -> None:
    existing = [make_task(f"old{i}", spread=["node.labels.zone"]) for i in range(2)]
    infos = [make_info("a", existing, labels={"zone": "a"}), make_info("b", labels={"zone": "b"})]
    result = Scheduler().schedule(infos, make_tasks(2, spread=["node.labels.zone"]))
    assert per_node(result) == {"b": 2}


def test_image_already_present_breaks_ties() -> None:
    infos = [make_info("n1"), make_info("n2", images=["nginx:latest"]), make_info("n3")]
    result = Scheduler().schedule(infos, make_tasks(1))
    assert result.assignments == {"t0": "n2"}


def test_batch_never_over_commits() -> None:
    infos = [make_info(f"n{i}", cpus=2, memory=4 * GIB) for i in range(3)]
    result = Scheduler().schedule(infos, make_tasks(10, cpus=1, memory=GIB))
    assert len(result.assignments) == 6
    assert all(info.free.nano_cpus == 0 for info in result.nodes.values())
    reason = "no suitable node: insufficient CPU or memory (needs 1 CPU, 1.0 GiB) on 3 nodes"
    assert set(result.pending.values()) == {reason}
    assert len(result.pending) == 4


def test_host_ports_and_max_replicas_limit_each_node() -> None:
    infos = [make_info(f"n{i}") for i in range(3)]
    result = Scheduler().schedule(infos, make_tasks(4, ports=[80]))
    assert sorted(per_node(result).values()) == [1, 1, 1]
    assert set(result.pending.values()) == {"no suitable node: host port 80/tcp in use on 3 nodes"}
    result = Scheduler("binpack").schedule(infos, make_tasks(7, max_replicas=2))
    assert sorted(per_node(result).values()) == [2, 2, 2]
    assert set(result.pending.values()) == {
        "no suitable node: max replicas per node (2) reached on 3 nodes"
    }


@pytest.mark.parametrize("mode", ["", "host"])
def test_a_host_mode_port_keeps_two_replicas_off_one_node(mode: str) -> None:
    infos = [make_info("n1", address="192.0.2.1")]
    result = Scheduler().schedule(infos, make_tasks(2, ports=[80], mode=mode))
    assert list(per_node(result).values()) == [1]
    assert set(result.pending.values()) == {"no suitable node: host port 80/tcp in use on 1 node"}


def test_ingress_replicas_share_a_node_that_meshes_them() -> None:
    """An ingress port takes no port of a meshing node (the mesh's DNAT reaches every
    task): two replicas land on one node, beside a host-mode user of another port."""
    meshed = make_info(
        "n1", [make_task("h", "other", ports=[81], mode="host")], address="192.0.2.1"
    )
    result = Scheduler().schedule([meshed], make_tasks(2, ports=[80], mode="ingress"))
    assert result.pending == {} and per_node(result) == {"n1": 2}
    # host-mode ports still count there
    result = Scheduler().schedule([meshed], [make_task("x", "web", ports=[81], mode="host")])
    assert "host port 81/tcp in use" in result.pending["x"]


def test_ingress_ports_are_host_ports_where_the_node_cannot_mesh() -> None:
    """A loopback (or unknown) node address: the agent publishes the port on the task's
    node, so one task per node publishes it."""
    for address in ("127.0.0.1", ""):
        infos = [make_info("n1", address=address)]
        result = Scheduler().schedule(infos, make_tasks(2, ports=[80], mode="ingress"))
        assert list(per_node(result).values()) == [1]
        assert "host port 80/tcp in use on 1 node" in next(iter(result.pending.values()))


def test_pending_reason_names_every_filter_that_removed_nodes() -> None:
    infos = [
        make_info("n1", memory=GIB, labels={"zone": "eu"}),
        make_info("n2", memory=GIB, labels={"zone": "eu"}),
        make_info("n3", labels={"zone": "us"}),
        make_info("n4", availability=NodeSpec.DRAIN),
    ]
    task = make_task("t", memory=2 * GIB, constraints=["node.labels.zone==eu"])
    result = Scheduler().schedule(infos, [task])
    assert result.pending == {
        "t": "no suitable node: insufficient memory (needs 2.0 GiB) on 2 nodes; "
        "1 node is not active (paused or drained); 1 node fails node.labels.zone==eu"
    }


def test_no_nodes_and_bad_placement() -> None:
    result = Scheduler().schedule([], make_tasks(2))
    assert set(result.pending.values()) == {"no suitable node: the cluster has no nodes"}
    bad = make_task("bad", constraints=["node.lables.zone==a"])
    result = Scheduler().schedule([make_info("n1")], [bad])
    assert result.pending["bad"] == (
        "invalid placement: unknown constraint key 'node.lables.zone' in 'node.lables.zone==a'"
    )


def test_the_callers_node_infos_are_not_changed() -> None:
    info = make_info("n1")
    result = Scheduler().schedule([info], make_tasks(3, cpus=1))
    assert info.tasks == {}
    assert result.nodes["n1"] is not info
    assert result.nodes["n1"].reserved.nano_cpus == 3 * CPU


def test_later_groups_see_earlier_placements() -> None:
    infos = [make_info("n1", memory=2 * GIB), make_info("n2", memory=2 * GIB)]
    tasks = make_tasks(2, "web", memory=GIB) + make_tasks(3, "db", prefix="d", memory=GIB)
    result = Scheduler().schedule(infos, tasks)
    assert len(result.assignments) == 4
    assert list(result.pending) == ["d2"]


def test_groups_tasks_by_service_and_spec() -> None:
    tasks = [*make_tasks(2, "a"), *make_tasks(1, "a", prefix="m", memory=GIB)]
    tasks += [*make_tasks(2, "b", prefix="b"), tasks[0]]
    assert [[t.id for t in group] for group in group_tasks(tasks)] == [
        ["t0", "t1"],
        ["m0"],
        ["b0", "b1"],
    ]


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        Scheduler(strategy="random")  # type: ignore[arg-type]


def test_all_is_complete() -> None:
    import dockyard.controller.scheduler as package

    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith(package.__name__)
    }
    assert public <= set(package.__all__)
    assert all(hasattr(package, name) for name in package.__all__)
