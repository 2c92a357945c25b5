"""`RootfsHolds`: a container's rootfs mount counted among those who use it besides its
own run (a ``docker cp`` out of it), so that none unmounts it from under another.

A stopped container's overlay is mounted by its first holder and unmounted by its last,
unless the container runs by then (a start reuses the mount it finds: the exit unmounts
it); an exit leaves it mounted while it is held (the last holder unmounts it). Each
container's count, and the mount's changes, go under a lock of its own (its *mount
lock*), which the runtime's exit handling takes too: the per-container lifecycle lock
cannot be taken there (a removal holds it while it waits for the exit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dockyard.agent.runtime.runc.rootfs import ContainerLayer

__all__ = ["RootfsHolds"]


class RootfsHolds:
    """The holders of each container's rootfs mount."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, container_id: str) -> asyncio.Lock:
        """The container's mount lock (take it after the lifecycle lock, never before)."""
        return self._locks.setdefault(container_id, asyncio.Lock())

    def held(self, container_id: str) -> bool:
        """Whether anyone holds the container's rootfs (call under its mount lock)."""
        return self._counts.get(container_id, 0) > 0

    def forget(self, container_id: str) -> None:
        """The container is removed: its lock goes (a holder left over counts alone)."""
        self._locks.pop(container_id, None)
        self._counts.pop(container_id, None)

    async def take(self, container_id: str, layer: ContainerLayer) -> None:
        """Hold the rootfs, mounting it unless it is (the caller holds the lifecycle lock:
        no start or removal is halfway)."""
        async with self.lock(container_id):
            await layer.mount()
            self._counts[container_id] = self._counts.get(container_id, 0) + 1

    async def release(
        self, container_id: str, layer: ContainerLayer, running: Callable[[], bool]
    ) -> None:
        """Let go of the rootfs; the last holder unmounts it unless the container
        `running()` (its exit unmounts it then). The caller holds the lifecycle lock."""
        async with self.lock(container_id):
            count = self._counts.get(container_id, 0) - 1
            if count > 0:
                self._counts[container_id] = count
                return
            self._counts.pop(container_id, None)
            if not running():
                await layer.unmount()
