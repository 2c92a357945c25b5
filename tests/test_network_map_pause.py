"""The leader's network map (controller/network_map.py) follows a change that comes right
after one that sent nothing: `service scale` writes the service (no map changes), then the
removed task's desired state (its address leaves the names); the second must not wait out
the interval a sent map earns (the agent stops the task meanwhile, and the VIP would keep
sending connections to it: tests/bench/bench_vip_follow.py)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from dockyard.common.states import TaskState
from dockyard.controller import network_map
from dockyard.controller.network_map import NetworkMapper, quiet_pause
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS, Store
from dockyard.v1.dispatcher_pb2 import DispatcherMessage
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Service, Task


def cluster() -> ClusterState:
    state = ClusterState(cast(Store, None))  # the view alone: nothing here reads the store
    node = Node(id="n1")
    node.network.subnet, node.network.address = "10.210.1.0/24", "192.0.2.1"
    service = Service(id="s1")
    service.spec.name = "web"
    state.nodes["n1"], state.services["s1"] = node, service
    for task_id, address in (("t1", "10.210.1.2"), ("t2", "10.210.1.3")):
        task = Task(id=task_id, service_id="s1", node_id="n1")
        task.desired_state = TaskState.RUNNING
        task.status.state = TaskState.RUNNING
        task.status.address = address
        state.tasks[task_id] = task
        state.tasks_by_service["s1"].add(task_id)
    return state


def changed(state: ClusterState) -> None:
    for event in state._subscribers:
        event.set()


def names(message: DispatcherMessage) -> dict[str, list[str]]:
    return {s.name: list(s.addresses) for s in message.network.services}


async def test_a_removal_right_after_a_change_that_sent_nothing_goes_out_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network_map, "SEND_INTERVAL", 60.0)  # what a sent map earns
    state = cluster()
    posted: asyncio.Queue[DispatcherMessage] = asyncio.Queue(maxsize=10)

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted.put_nowait(message)
        return True

    mapper = NetworkMapper(state, post, lambda: ["n1"])
    running = asyncio.create_task(mapper.run())
    try:
        await asyncio.sleep(0.05)
        state.services["s1"].spec.labels["replicas"] = "1"  # the scale's service write
        changed(state)
        await asyncio.sleep(0.05)  # looked at: nothing any node needs
        assert posted.empty()
        removed = Task()
        removed.CopyFrom(state.tasks["t2"])
        removed.desired_state = TaskState.SHUTDOWN  # then the removed task's, as the watch
        state._put(TASKS, state.tasks, "t2", removed)  # applies it (the trackers see it)
        changed(state)
        message = await asyncio.wait_for(posted.get(), timeout=10)
        assert names(message) == {"web": ["10.210.1.2"]}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def test_the_pause_after_a_quiet_look_is_bounded_by_its_cost() -> None:
    assert quiet_pause(0.0) == network_map.QUIET_PAUSE
    assert quiet_pause(0.01) == pytest.approx(0.01 / network_map.LOOK_SHARE)
    assert quiet_pause(10.0) == network_map.SEND_INTERVAL
