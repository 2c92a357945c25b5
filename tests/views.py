"""A cluster view kept current for a test: the leader runs `ClusterState.watch` among
its supervised loops; a test that needs a live view without a leader runs it here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from dockyard.controller.state import ClusterState
from dockyard.controller.store import Store


@contextlib.asynccontextmanager
async def watched_view(store: Store) -> AsyncIterator[ClusterState]:
    """A view of `store`, loaded, and following its changes until the block ends."""
    state = ClusterState(store)
    await state.load()
    async with background(state.watch(), "test:view"):
        yield state


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """``work`` running as a task until the block ends, then cancelled and awaited."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
