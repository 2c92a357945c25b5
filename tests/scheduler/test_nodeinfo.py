"""NodeInfo keeps reservations, ports and per-service counts in step with its tasks."""

from __future__ import annotations

import dataclasses

from dockyard.controller.scheduler import Amount, NodeInfo
from dockyard.v1.types_pb2 import NodeSpec, TaskStatus

from .helpers import CPU, GIB, make_node, make_task


def test_from_node_sums_reservations_and_skips_stopped_tasks() -> None:
    running = make_task("a", cpus=1, memory=GIB, ports=[80])
    running.status.state = TaskStatus.RUNNING
    stopped = make_task("b", cpus=2, memory=GIB)
    stopped.status.state = TaskStatus.FAILED
    info = NodeInfo.from_node(make_node("n1", cpus=4, memory=8 * GIB), [running, stopped])
    assert set(info.tasks) == {"a"}
    assert info.reserved == Amount(CPU, GIB)
    assert info.free == Amount(3 * CPU, 7 * GIB)
    assert info.host_ports == {("tcp", 80): 1}
    assert info.tasks_of("svc") == 1
    assert info.ready and info.active


def test_add_and_remove_task() -> None:
    info = NodeInfo.from_node(make_node("n1"))
    task = make_task("a", "web", cpus=0.5, memory=GIB, ports=[8080])
    assert info.add_task(task)
    assert not info.add_task(task)  # once only
    assert info.tasks_of("web") == 1
    assert info.remove_task("a")
    assert not info.remove_task("a")
    assert info.reserved == Amount()
    assert info.host_ports == {}
    assert info.service_tasks == {}


def test_copy_is_independent() -> None:
    info = NodeInfo.from_node(make_node("n1"), images=["nginx:latest"])
    clone = info.copy()
    clone.add_task(make_task("a", cpus=1))
    assert info.tasks == {} and info.reserved == Amount()
    assert clone.images == info.images


def test_copy_holds_every_field() -> None:
    """A copy equals its original in every field (what it reads from its Node too), its
    dicts its own, also for a node that meshes ingress ports and one that is not ready."""
    tasks = [make_task("a", cpus=1, ports=[80]), make_task("b", "other", memory=GIB)]
    for node in (
        make_node("n1", address="10.0.0.5"),
        make_node("n2", availability=NodeSpec.DRAIN),
        make_node("n3", ready=False),
    ):
        info = NodeInfo.from_node(node, tasks, images=["nginx:latest"])
        clone = info.copy()
        for field in dataclasses.fields(NodeInfo):
            assert getattr(clone, field.name) == getattr(info, field.name), field.name
        for name in ("tasks", "host_ports", "service_tasks"):
            assert getattr(clone, name) is not getattr(info, name), name
