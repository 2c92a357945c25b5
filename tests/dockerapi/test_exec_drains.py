"""A detached exec's drain outlives its request: it is an item of the Docker API's
background scope, which the app's cleanup closes (no drain left pending after the API
stops; the process goes on in its container)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from dockyard.agent.dockerapi import exec as docker_exec
from dockyard.common.taskscope import TaskScope


class EndlessSession:
    """An exec session whose output never ends (a detached `sleep`)."""

    async def output(self) -> Any:
        await asyncio.Future()
        yield b""

    async def wait(self) -> int:
        return 0


async def test_the_apps_cleanup_ends_the_drains_of_detached_execs() -> None:
    before = asyncio.all_tasks()
    ctx: Any = SimpleNamespace(background=TaskScope("dockerapi"))
    record: Any = SimpleNamespace(id="e1", running=True, exit_code=None)
    async with docker_exec.lifespan(ctx)(None):  # type: ignore[arg-type]
        await ctx.background.open()
        drain = ctx.background.spawn(docker_exec._drain(record, EndlessSession()), "drain")
        await asyncio.sleep(0)
        assert not drain.done()
    assert drain.cancelled()
    assert {t.get_name() for t in asyncio.all_tasks() - before if not t.done()} == set()
