"""A batch reads what a group's tasks take from a node (reservation, host ports) once,
from its first task (`Footprint`): the NodeInfos it leaves must equal ones rebuilt from
their tasks, on nodes that mesh ingress ports and on nodes that do not."""

from __future__ import annotations

from dockyard.controller.scheduler import NodeInfo, Scheduler
from dockyard.controller.scheduler.nodeinfo import Footprint

from .helpers import CPU, GIB, make_info, make_node, make_task, make_tasks


def test_footprint_of_a_task() -> None:
    task = make_task("t", cpus=0.5, memory=GIB, ports=[80], mode="ingress")
    task.spec.ports.add(target_port=22, published_port=2222, protocol="UDP", publish_mode="host")
    footprint = Footprint.of(task)
    assert (footprint.needs.nano_cpus, footprint.needs.memory_bytes) == (CPU // 2, GIB)
    assert footprint.ports == (("tcp", 80), ("udp", 2222))
    assert footprint.meshed_ports == (("udp", 2222),)  # ingress takes no port when meshed


def test_a_batch_leaves_infos_equal_to_a_rebuild() -> None:
    infos = [
        make_info("meshed", address="10.0.0.1", cpus=64, memory=64 * GIB),
        make_info("plain", address="127.0.0.1", cpus=64, memory=64 * GIB),
    ]
    tasks = make_tasks(2, "web", prefix="w", cpus=1, memory=GIB, ports=[8080], mode="ingress")
    tasks += make_tasks(2, "ssh", prefix="s", cpus=0.5, ports=[2222], mode="host")
    tasks += make_tasks(4, "idle", prefix="i")
    result = Scheduler().schedule(infos, tasks)
    assert len(result.assignments) == len(tasks)
    by_id = {t.id: t for t in tasks}
    for node_id, info in result.nodes.items():
        placed = [by_id[t] for t, n in result.assignments.items() if n == node_id]
        address = "10.0.0.1" if node_id == "meshed" else "127.0.0.1"
        node = make_node(node_id, address=address, cpus=64, memory=64 * GIB)
        rebuilt = NodeInfo.from_node(node, placed)
        assert info.host_ports == rebuilt.host_ports, node_id
        assert (info.reserved, info.free) == (rebuilt.reserved, rebuilt.free), node_id
        assert info.service_tasks == rebuilt.service_tasks, node_id
        assert sorted(info.tasks) == sorted(rebuilt.tasks), node_id
