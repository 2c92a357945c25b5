"""A cluster view kept current for a test: the leader runs `ClusterState.watch` among
its supervised loops; a test that needs a live view without a leader runs it here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dockyard.controller.state import ClusterState
from dockyard.controller.store import Store


@contextlib.asynccontextmanager
async def watched_view(store: Store) -> AsyncIterator[ClusterState]:
    """A view of `store`, loaded, and following its changes until the block ends."""
    state = ClusterState(store)
    await state.load()
    watcher = asyncio.create_task(state.watch(), name="test:view")
    try:
        yield state
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
