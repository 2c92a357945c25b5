"""The scheduler's node infos patched per moved task (`patch_infos`) equal infos
rebuilt from every task of the view, over random sequences of task puts, one-field
steps and removals fed through the cluster view, with reservations and host ports."""

from __future__ import annotations

from hypothesis import example, given

from dockyard.common.states import TaskState
from dockyard.controller.scheduler.holders import Holders, patch_infos
from dockyard.controller.scheduler.nodeinfo import NodeInfo
from dockyard.controller.store import TASKS
from dockyard.v1.types_pb2 import Node, NodeStatus
from dockyard.v1.workloads_pb2 import Task
from tests.test_incremental_views import SETTINGS, cluster, events, moved_on, task


def with_resources(record: Task) -> Task:
    """The task with a service, a reservation and ports of its own: fixed for a task's
    life (a spec change makes new tasks), so one task ID always gets the same."""
    number = int(record.id[1:])
    record.service_id = f"s{number % 3 + 1}"
    record.spec.resources.reservations.nano_cpus = (number + 1) * 100_000_000
    record.spec.resources.reservations.memory_bytes = (number + 1) * 2**20
    if number % 2:
        record.spec.ports.add(published_port=8000 + number % 3, publish_mode="host")
    if number % 3 == 0:  # takes a port of its node unless the node meshes ingress
        record.spec.ports.add(published_port=9000, publish_mode="ingress")
    return record


def summary(info: NodeInfo) -> tuple[object, ...]:
    return (
        sorted(info.tasks),
        info.reserved,
        info.free,
        dict(info.host_ports),
        dict(info.service_tasks),
    )


@SETTINGS
@given(steps=events)
@example(  # a task placed, then reported stopped: it gives its reservation back
    steps=[
        ("put", "t1", "s1", "n1", TaskState.ASSIGNED, TaskState.RUNNING, "", False, 1),
        ("look",),
        ("step", "status", TaskState.COMPLETE),
    ]
)
def test_patched_infos_equal_rebuilt_ones(steps: list[tuple[object, ...]]) -> None:
    state = cluster()
    holders = Holders(state.tasks)
    holders.reset()
    tracker = state.track(task_ids=True)
    infos = {n: NodeInfo.from_node(node, state.tasks_of_node(n)) for n, node in state.nodes.items()}
    for step in [*steps, ("look",)]:
        if step[0] == "put":
            record = with_resources(task(step))
            state._put(TASKS, state.tasks, record.id, record)
        elif step[0] == "remove":
            state._remove(TASKS, state.tasks, str(step[1]))
        elif step[0] == "step" and state.tasks:
            record = moved_on(state.tasks[sorted(state.tasks)[0]], str(step[1]), step[2])
            state._put(TASKS, state.tasks, record.id, record)
        elif step[0] == "look":
            patch_infos(infos, holders.moves(tracker.take().task_ids or ()), state.tasks)
            for node_id, node in state.nodes.items():
                rebuilt = NodeInfo.from_node(node, state.tasks_of_node(node_id))
                assert summary(infos[node_id]) == summary(rebuilt), node_id


@SETTINGS
@given(steps=events)
def test_a_changed_node_record_keeps_the_sums_a_rebuild_gives(
    steps: list[tuple[object, ...]],
) -> None:
    state = cluster()
    for step in steps:
        if step[0] == "put":
            record = with_resources(task(step))
            state._put(TASKS, state.tasks, record.id, record)
    for node_id, node in state.nodes.items():
        info = NodeInfo.from_node(node, state.tasks_of_node(node_id))
        for address in ("192.168.0.9", "127.0.0.1"):  # the ingress meshing may change too
            changed = Node()
            changed.CopyFrom(node)
            changed.network.address = address
            changed.status.state = NodeStatus.DOWN
            rebuilt = NodeInfo.from_node(changed, state.tasks_of_node(node_id))
            swapped = info.with_node(changed)
            assert summary(swapped) == summary(rebuilt)
            assert (swapped.ready, swapped.meshed) == (rebuilt.ready, rebuilt.meshed)
