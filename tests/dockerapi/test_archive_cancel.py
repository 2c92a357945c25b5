"""``docker cp`` out of a stopped container mounts its rootfs for the copy and unmounts
it after, also when the handler is cancelled: aiohttp cancels it when the client hangs
up, which docker cp does as soon as it has read the archive, while the handler is still
unmounting. With the thread pool busy (a loaded agent) a plain ``to_thread`` unmount was
dropped then, and the overlay stayed mounted (test_cp_out_of_an_exited_container's
flake). Only a mount the copy made is undone by it."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest

from dockyard.agent.dockerapi.archive import _Rootfs
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc.rootfs import ContainerLayer, is_mounted
from tests.busy_worker import BusyWorker, settle

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


def stopped_view(layer: ContainerLayer) -> Any:
    """What ``_Rootfs`` reads of a container view: an exited runc container's."""
    info = SimpleNamespace(
        log_path=layer.target.parent / "ctr.log",
        config=SimpleNamespace(lower_dirs=layer.lower_dirs),
        state=SimpleNamespace(status=ContainerStatus.EXITED),
    )
    return SimpleNamespace(info=info)


async def test_the_copy_unmounts_also_when_cancelled_as_it_ends(
    overlay_layer: ContainerLayer, busy: BusyWorker
) -> None:
    inside, leave = asyncio.Event(), asyncio.Event()
    seen: list[list[str]] = []

    async def copy_out() -> None:  # the GET handler's use of the rootfs
        async with _Rootfs(stopped_view(overlay_layer), "runc").open() as root_fd:
            seen.append(os.listdir(root_fd))
            inside.set()
            await leave.wait()

    handler = asyncio.create_task(copy_out())
    await inside.wait()
    assert seen == [["out"]] and is_mounted(overlay_layer.target)
    async with busy.hold():
        leave.set()  # the archive is sent; the handler goes on to unmount...
        await settle()
        handler.cancel()  # ...as the client hangs up
        await settle()
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert not is_mounted(overlay_layer.target)


async def test_a_copy_leaves_a_mount_it_did_not_make(overlay_layer: ContainerLayer) -> None:
    await overlay_layer.mount()  # e.g. a start that mounted it while the copy began
    async with _Rootfs(stopped_view(overlay_layer), "runc").open() as root_fd:
        assert os.listdir(root_fd) == ["out"]
    assert is_mounted(overlay_layer.target)
