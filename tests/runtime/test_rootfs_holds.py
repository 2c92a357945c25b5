"""``docker cp`` holds a container's rootfs through the runc runtime (``rootfs()``): a
start meanwhile runs on the copy's mount and the copy's end leaves it mounted; an exit
meanwhile leaves it mounted for the copy; the last holder unmounts a stopped one, also
when cancelled as it ends (aiohttp cancels the handler when docker cp hangs up) with
the thread pool busy. And a removal cancelled halfway still deletes the container."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.agent.dockerapi.archive import _Rootfs
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc.rootfs import is_mounted
from tests.busy_worker import BusyWorker, settle
from tests.polling import wait_until

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


def _copy(env: Any, cid: str) -> _Rootfs:
    """The archive handler's hold on the container's rootfs."""
    ctx = SimpleNamespace(runtime="runc", containers=SimpleNamespace(runtime=env.runtime))
    return _Rootfs(SimpleNamespace(info=SimpleNamespace(id=cid)), ctx)  # type: ignore[arg-type]


async def _exited(env: Any) -> str:
    """A container that wrote /out and exited (its rootfs unmounted by the exit); started
    again, it sleeps."""
    script = "if [ -e /out ]; then exec sleep 30; fi; echo result > /out"
    info = await env.runtime.create(env.config("sh", "-c", script))
    await env.runtime.start(info.id)
    await env.runtime.wait(info.id)
    assert not is_mounted(_target(env, info.id))
    return str(info.id)


def _target(env: Any, cid: str) -> Any:
    return env.runtime.containers_root / cid / "rootfs"


async def test_a_copy_mounts_a_stopped_containers_rootfs_and_unmounts_it(env: Any) -> None:
    cid = await _exited(env)
    async with _copy(env, cid).open() as root_fd:
        assert "out" in os.listdir(root_fd)
        assert is_mounted(_target(env, cid))
    assert not is_mounted(_target(env, cid))


async def test_a_created_container_copied_from_mounts_again_at_its_start(env: Any) -> None:
    """A start right after its create finds the create's mount (nothing to prepare),
    unless a copy held the rootfs meanwhile: the copy's end unmounted it."""
    info = await env.runtime.create(env.config("sh", "-c", "test -e /bin/sh"))
    async with _copy(env, info.id).open():
        pass
    assert not is_mounted(_target(env, info.id))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    await env.runtime.remove(info.id)


async def test_a_start_during_a_copy_keeps_its_rootfs_after_the_copy(env: Any) -> None:
    cid = await _exited(env)
    async with _copy(env, cid).open():
        await env.runtime.start(cid)  # runs on the copy's mount
    assert (await env.runtime.inspect(cid)).state.status is ContainerStatus.RUNNING
    assert is_mounted(_target(env, cid))  # main: unmounted under the running container
    await env.runtime.stop(cid, timeout=0)
    assert not is_mounted(_target(env, cid))  # its exit unmounts it, no copy holds it


async def test_an_exit_during_a_copy_leaves_the_rootfs_to_the_copy(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "echo result > /out; sleep 30"))
    await env.runtime.start(info.id)
    async with _copy(env, info.id).open() as root_fd:
        await wait_until(lambda: "out" in os.listdir(root_fd), "the container's /out")
        await env.runtime.stop(info.id, timeout=0)
        assert is_mounted(_target(env, info.id))  # main: unmounted by the exit
        assert "out" in os.listdir(root_fd)
    assert not is_mounted(_target(env, info.id))  # the last holder's


async def test_the_copy_unmounts_also_when_cancelled_as_it_ends(
    busy: BusyWorker,
    env: Any,  # busy first: env's teardown needs a thread pool
) -> None:
    cid = await _exited(env)
    inside, leave = asyncio.Event(), asyncio.Event()

    async def copy_out() -> None:  # the GET handler's use of the rootfs
        async with _copy(env, cid).open():
            inside.set()
            await leave.wait()

    handler = asyncio.create_task(copy_out())
    await inside.wait()
    async with busy.hold():
        leave.set()  # the archive is sent; the handler goes on to unmount...
        await settle()
        handler.cancel()  # ...as the client hangs up
        await settle()
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert not is_mounted(_target(env, cid))


async def test_a_removal_cancelled_halfway_still_deletes_the_container(
    busy: BusyWorker,
    env: Any,  # busy first: env's teardown needs a thread pool
) -> None:
    cid = await _exited(env)
    base = env.runtime.containers_root / cid
    async with busy.hold():  # each thread hop of the removal waits for the worker
        remover = asyncio.create_task(env.runtime.remove(cid))
        await settle()
        remover.cancel()  # a `docker rm` client that hung up
        await settle()
    with pytest.raises(asyncio.CancelledError):
        await remover
    assert not base.exists()  # main: left in place, with its record, for the next start
    await env.runtime.close()  # waits for the trash's removal
    assert list((env.state_root / "trash").iterdir()) == []


async def test_close_leaves_no_task_of_the_runtime_pending(env: Any) -> None:
    """The exit watchers and the trash's removals are the runtime's tasks, ended by
    `close` (the containers keep running under conmon)."""
    before = asyncio.all_tasks()
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)  # watched
    removed = await env.runtime.create(env.config("true"))
    await env.runtime.remove(removed.id)  # its layer goes to the trash, removed in a task
    await env.runtime.close()
    assert {t.get_name() for t in asyncio.all_tasks() - before if not t.done()} == set()
    # the container still runs: the fixture's clean-up kills it
