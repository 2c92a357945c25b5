"""The HTTP event hub's watch is an item of the hub's task scope: a watch that fails
(a bug: etcd's errors are retried) is logged and ends every stream (the clients resume
on a new watch) instead of leaving them open with nothing coming; `close` leaves no
task pending."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog.testing

from dockyard.controller.http.events import EventHub

pytestmark = pytest.mark.timeout(30)


class BreakingStore:
    """A Store stand-in whose watch fails when told to."""

    def __init__(self) -> None:
        self.revision = 10
        self.watches = 0
        self.fail = asyncio.Event()

    async def list_all(self, kind: Any, at_revision: int = 0) -> tuple[list[Any], int]:
        return [], self.revision

    async def watch_kinds(self, kinds: Any, start_revision: int) -> Any:
        self.watches += 1
        await self.fail.wait()
        raise RuntimeError("a bug in the watch")
        yield  # an async generator, as the store's


async def test_a_failing_watch_ends_the_streams_and_a_new_one_starts() -> None:
    before = asyncio.all_tasks()
    store = BreakingStore()
    hub = EventHub(store)  # type: ignore[arg-type]
    subscription = await hub.subscribe(None)
    assert subscription is not None
    live, _ = subscription
    with structlog.testing.capture_logs() as logs:
        store.fail.set()
        frames = await live.take(5)
    assert [e["event"] for e in logs if e["event"] == "task.failed"] == ["task.failed"]
    assert frames and frames[-1].startswith(b"event: reset") and live.finished
    store.fail.clear()
    again = await hub.subscribe(None)  # a new watch for the client that resumes
    await asyncio.sleep(0)
    assert again is not None and store.watches == 2
    await hub.close()
    assert {t.get_name() for t in asyncio.all_tasks() - before if not t.done()} == set()
