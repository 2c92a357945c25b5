"""The cluster view applied from etcd's watch, against a real etcd: each record carries
the revision it was written at (`meta.version`, what a compare-and-write expects), a
removed record leaves the view, and a loop's tracker is told the services and nodes
whose tasks changed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.common.states import TaskState
from dockyard.controller.store import NODES, TASKS, Store
from dockyard.v1.types_pb2 import Node
from dockyard.v1.workloads_pb2 import Task
from tests.etcd_store import connected_store
from tests.scheduler.helpers import make_node, make_task
from tests.views import watched_view


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    async with connected_store(etcd, "/viewevents") as store:
        yield store


async def test_watched_records_carry_their_revision(store: Store) -> None:
    await store.create(NODES, "n1", make_node("n1"))
    async with watched_view(store) as view:
        task = make_task("t1", "web")
        task.status.state = TaskState.PENDING
        created = await store.create(TASKS, task.id, task)
        await view.wait_for_revision(created)
        assert view.tasks["t1"].meta.version == created
        placed = Task()
        placed.CopyFrom(view.tasks["t1"])
        placed.node_id, placed.status.state = "n1", TaskState.ASSIGNED
        updated = await store.update(TASKS, placed.id, placed)
        await view.wait_for_revision(updated)
        assert view.tasks["t1"].meta.version == updated
        assert view.tasks["t1"].node_id == "n1"
        node = Node()
        node.CopyFrom(view.nodes["n1"])
        node.spec.labels["zone"] = "a"
        revision = await store.update(NODES, node.id, node)
        await view.wait_for_revision(revision)
        assert view.nodes["n1"].meta.version == revision
        removed = await store.delete(TASKS, "t1")
        await view.wait_for_revision(removed)
        assert "t1" not in view.tasks
        assert "t1" not in view.tasks_by_node.get("n1", set())


async def test_a_tracker_is_told_the_services_and_nodes_of_changed_tasks(store: Store) -> None:
    async with watched_view(store) as view:
        tracker = view.track(task_ids=True)
        task = make_task("t1", "web")
        task.node_id, task.status.state = "n2", TaskState.ASSIGNED
        await view.wait_for_revision(await store.create(TASKS, task.id, task))
        changes = tracker.take()
        assert changes.services == {"web"}
        assert changes.task_nodes == {"n2"}
        assert changes.task_ids == {"t1"}
        assert changes.nodes == set()
