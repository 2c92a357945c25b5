"""Orchestrator convergence against real etcd: the leader stamps, on its own
clock, when it first sees an agent's task state change; a duplicate task
written behind the controller's back is reaped, and scaling up afterwards
adds only the missing slot (a real controller and hollow agents)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.common.timestamps import wall_time
from dockyard.controller.assignments import StatusWriter
from dockyard.controller.orchestrators.tasks import (
    new_task,
    observed_at,
    set_status,
)
from dockyard.controller.state import ClusterState
from dockyard.controller.store import TASKS, Store
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetServiceRequest,
    ListTasksRequest,
    UpdateServiceRequest,
)
from dockyard.v1.dispatcher_pb2 import TaskStatusReport
from dockyard.v1.workloads_pb2 import Service, ServiceSpec, Task
from tests.conftest import Cluster, LoopThread
from tests.etcd_store import connected_store
from tests.orchestrators.helpers import is_live
from tests.views import watched_view

HOUR = 3600.0


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/test") as store:
        yield store


async def report(
    state: ClusterState, writer: StatusWriter, task_id: str, status: int, message: str
) -> Task:
    """Send one report from node n1, as an agent a whole hour ahead would."""
    sent = TaskStatusReport(task_id=task_id)
    sent.status.state = status  # type: ignore[assignment]
    sent.status.message = message
    sent.status.timestamp.FromNanoseconds(int((time.time() + HOUR) * 1e9))
    changed = state.subscribe()
    assert writer.accept("n1", sent) is None
    async with asyncio.timeout(10):
        while state.tasks[task_id].status.message != message:
            await changed.wait()
            changed.clear()
    return state.tasks[task_id]


async def test_a_state_change_is_stamped_on_the_controllers_clock(store: Store) -> None:
    task = Task(id="t1", service_id="svc", slot=1, node_id="n1", desired_state=TaskState.RUNNING)
    set_status(task, TaskState.ASSIGNED, "scheduled")
    task.observed_at.FromSeconds(1)  # long ago: a change must move it
    await store.create(TASKS, task.id, task)
    async with watched_view(store) as state:
        writer = StatusWriter(store, state)
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(writer.run())
            # The controller's clock (the process's step-free wall clock), not time.time():
            # the system clock may be stepped while the suite runs (a loaded VM's was).
            before = wall_time()
            started = await report(state, writer, "t1", TaskState.RUNNING, "started")
            after = wall_time()
            assert before - 1 <= observed_at(started) <= after + 1
            assert started.status.timestamp.seconds > after + HOUR / 2  # the agent's own
            same = await report(state, writer, "t1", TaskState.RUNNING, "still running")
            assert same.observed_at == started.observed_at  # no change of state, no new stamp
            runner.cancel()


def live_per_slot(control: Any, name: str) -> Counter[int]:
    listed = control.ListTasks(ListTasksRequest(services=[name], include_history=True)).tasks
    return Counter(t.slot for t in listed if is_live(t))


def running_count(control: Any, name: str) -> int:
    listed = control.ListTasks(ListTasksRequest(services=[name])).tasks
    return sum(1 for t in listed if t.status.state == TaskState.RUNNING)


def test_a_duplicate_in_a_slot_is_reaped_and_scaling_adds_only_missing_slots(
    tmp_path: Path, loop_thread: LoopThread, cluster_factory: Callable[..., Cluster]
) -> None:
    etcd = EtcdServer(tmp_path / "etcd" / "data", log_path=tmp_path / "etcd.log")
    loop_thread.run(etcd.start())
    store = Store([etcd.endpoint], "/dockyard")
    cluster = cluster_factory(etcd_endpoints=[etcd.endpoint])
    try:
        loop_thread.run(store.connect(5))
        cluster.start_controller(["--node-down-grace", "2"])
        cluster.start_hollow_nodes()
        control = cluster.control()
        spec = ServiceSpec(name="web")
        spec.task.container.image = "busybox"
        spec.task.container.command.extend(["sleep", "3600"])
        spec.replicated.replicas = 2
        control.CreateService(CreateServiceRequest(spec=spec))
        cluster.wait_for(lambda: running_count(control, "web") == 2, "2 tasks running")

        # A double create, as a deposed leader or a half-committed plan leaves it.
        service = control.GetService(GetServiceRequest(service="web"))
        twin = new_task(
            Service(id=service.id, spec=service.spec, spec_version=service.spec_version), slot=1
        )
        twin.id = secrets.token_hex(12)
        loop_thread.run(store.create(TASKS, twin.id, twin))
        cluster.wait_for(
            lambda: live_per_slot(control, "web") == Counter({1: 1, 2: 1}),
            "one live task per slot again",
        )

        service = control.GetService(GetServiceRequest(service="web"))
        service.spec.replicated.replicas = 3
        control.UpdateService(
            UpdateServiceRequest(service="web", version=service.meta.version, spec=service.spec)
        )
        cluster.wait_for(lambda: running_count(control, "web") == 3, "3 tasks running")
        assert live_per_slot(control, "web") == Counter({1: 1, 2: 1, 3: 1})
        control.close()
    finally:
        cluster.stop()
        loop_thread.run(store.close())
        loop_thread.run(etcd.stop())
