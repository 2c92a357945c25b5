"""The worker over the real runc runtime: pulled from a real registry, run, stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.agent.containers.backends import LocalImages
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.executors.task import TaskExecutor
from dockyard.agent.images.service import ImageService
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from dockyard.agent.worker import Worker
from dockyard.common.distribution.registry import RegistryConfig
from tests.agent.conftest import ImageRegistry, image_registry
from tests.runtime.conftest import _have_runc, cleanup_everything
from tests.worker.conftest import FakeSession, State, full_set, make_task, until

__all__ = ["image_registry"]  # the session fixture, shared with tests/agent

pytestmark = [
    pytest.mark.runc,
    pytest.mark.registry,
    pytest.mark.skipif(not _have_runc(), reason="needs root, runc, conmon and /bin/busybox"),
]


@dataclass
class Node:
    manager: ContainerService
    worker: Worker
    session: FakeSession


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "agent"
    cgroup = f"dockyard-test-{uuid.uuid4().hex[:8]}"
    try:
        yield root, cgroup
    finally:
        cleanup_everything(root / "runtime", cgroup)


@pytest.fixture
async def node(state: tuple[Path, str]) -> AsyncIterator[Node]:
    root, cgroup = state
    images = await asyncio.to_thread(ImageService, root / "images", RegistryConfig())
    runtime = RuncRuntime(root / "runtime", cgroup_parent=cgroup)
    manager = ContainerService(runtime, LocalImages(images), root / "containers")
    await manager.start()
    session = FakeSession()
    session.connect()
    worker = Worker(TaskExecutor(manager), session, root, report_window=0)  # every step
    await worker.start()
    try:
        yield Node(manager, worker, session)
    finally:
        await worker.close()
        for view in await manager.list(all=True):  # leave nothing running
            await manager.remove(view.info.id, force=True)
        await manager.close()


async def test_runc_tasks_pull_run_fail_and_stop(node: Node, image_registry: ImageRegistry) -> None:
    session, image = node.session, image_registry.busybox
    failing = make_task("exit3task0001", ["sh", "-c", "exit 3"], image=image)
    sleeper = make_task("sleeptask0001", ["sleep", "600"], image=image, grace=1.0)
    await node.worker.on_assignments(full_set(failing, sleeper))

    await until(lambda: session.states(failing.id)[-1:] == ["FAILED"], "exit 3 FAILED", 60)
    assert session.states(failing.id) == ["ACCEPTED", "PREPARING", "STARTING", "RUNNING", "FAILED"]
    status = session.last(failing.id)
    assert status.exit_code == 3 and status.error == "task: non-zero exit (3)"

    await until(lambda: session.states(sleeper.id)[-1:] == ["RUNNING"], "sleep RUNNING", 60)
    container_id = session.last(sleeper.id).container_id
    view = await node.manager.inspect(container_id)
    assert view.info.name == "web.1.sleeptask000"
    assert view.info.labels["dockyard.task.id"] == sleeper.id
    assert view.info.config.restart_policy.name == "no"

    sleeper.desired_state = State.SHUTDOWN
    await node.worker.on_assignments(full_set(failing, sleeper))
    await until(lambda: session.states(sleeper.id)[-1:] == ["SHUTDOWN"], "sleep SHUTDOWN", 30)
    view = await node.manager.inspect(container_id)
    assert view.info.state.status is ContainerStatus.EXITED

    await node.worker.on_assignments(full_set())
    await until(lambda: not node.worker.statuses(), "tasks forgotten")
    for _ in range(200):
        if not await node.manager.list(all=True):
            break
        await asyncio.sleep(0.05)
    assert await node.manager.list(all=True) == []
