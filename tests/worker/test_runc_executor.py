"""The worker over the real runc runtime: pulled from a real registry, run, stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.containers.backends import LocalImages
from dockyard.agent.containers.request import parse_image_ref
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.executors.task import TaskExecutor
from dockyard.agent.images.service import ImageService
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc import runtime as runtime_module
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


SLOW_CREATE = 0.2
"""Seconds each create of the set below sleeps in its thread (a loaded disk)."""


async def test_a_set_starts_containers_while_its_other_tasks_are_prepared(
    node: Node, image_registry: ImageRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scale-up's tasks arrive at once and queue their creates in the default executor
    together; the first conmon (`runc create`) must not wait for all of them. Here the
    executor has 4 workers and 24 slow creates: 6 rounds. A start queued behind the
    creates ran after the last round; its own lane lets it run after the first."""
    image = image_registry.busybox
    await node.manager.images.pull(parse_image_ref("image", image))
    made: list[float] = []
    launched: list[float] = []
    real_create = runtime_module._create_blocking
    real_launch = runtime_module.launch_conmon

    def slow_create(*args: Any) -> None:
        time.sleep(SLOW_CREATE)
        real_create(*args)
        made.append(time.monotonic())

    async def launch(**kwargs: Any) -> tuple[int, int]:
        launched.append(time.monotonic())
        return await real_launch(**kwargs)

    monkeypatch.setattr(runtime_module, "_create_blocking", slow_create)
    monkeypatch.setattr(runtime_module, "launch_conmon", launch)
    loop = asyncio.get_running_loop()
    saved = loop._default_executor  # made by the fixture; put back for its teardown
    assert isinstance(saved, ThreadPoolExecutor)
    pool = ThreadPoolExecutor(4, thread_name_prefix="four-workers")
    loop.set_default_executor(pool)
    tasks = [
        make_task(f"ramp{i:04d}task0", ["sleep", "600"], image=image, slot=i + 1) for i in range(24)
    ]
    try:
        await node.worker.on_assignments(full_set(*tasks))
        await until(
            lambda: all(node.session.states(t.id)[-1:] == ["RUNNING"] for t in tasks),
            "24 tasks RUNNING",
            180,
        )
    finally:
        loop.set_default_executor(saved)
        pool.shutdown(wait=False)
    assert len(made) == len(launched) == 24
    # the first container went to runc before half of the set was even prepared
    assert launched[0] < sorted(made)[len(made) // 2]
