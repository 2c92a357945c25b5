"""``ContainerLayer.mount``/``unmount`` called from a task that is cancelled meanwhile
(an aiohttp handler whose client hung up): the mount(2)/umount(2) still happens, and a
mount the cancelled call made is undone, so no overlay is left that nobody knows of.
A busy one-worker thread pool makes the thread hop wait, as on a loaded agent."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from dockyard.agent.runtime.runc import rootfs
from dockyard.agent.runtime.runc.rootfs import ContainerLayer, is_mounted
from tests.busy_worker import BusyWorker, settle

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


async def test_an_unmount_queued_for_a_worker_happens_when_cancelled(
    overlay_layer: ContainerLayer, busy: BusyWorker
) -> None:
    assert await overlay_layer.mount()
    async with busy.hold():
        caller = asyncio.create_task(overlay_layer.unmount())
        await settle()
        caller.cancel()
        await settle()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not is_mounted(overlay_layer.target)


async def test_a_mount_made_for_a_cancelled_caller_is_undone(
    overlay_layer: ContainerLayer, busy: BusyWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    in_mount, go_on = asyncio.Event(), threading.Event()

    def slow_is_mounted(path: Path) -> bool:  # the thread is inside the mount call
        loop.call_soon_threadsafe(in_mount.set)
        go_on.wait(30)
        return is_mounted(path)

    monkeypatch.setattr(rootfs, "is_mounted", slow_is_mounted)
    caller = asyncio.create_task(overlay_layer.mount())
    await in_mount.wait()
    caller.cancel()
    await settle()
    go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.to_thread(lambda: None)  # the one worker is done with the mount
    assert not is_mounted(overlay_layer.target)


async def test_mount_says_whether_it_mounted(overlay_layer: ContainerLayer) -> None:
    assert await overlay_layer.mount() is True
    assert await overlay_layer.mount() is False  # mounted already: not this call's
    await overlay_layer.unmount()
    assert not is_mounted(overlay_layer.target)
