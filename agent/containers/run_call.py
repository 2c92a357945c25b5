"""`Containers.Run`: create, start, output, exit and removal in one streaming call.

What `dockyard run --rm` (without -d/-it) made four to six calls for (image inspect,
Create, Start, Logs, Wait, Remove). The lifecycle runs in its own task, an item of the
service's `calls` scope (`ContainerService.close` cancels and awaits it), which removes
the container whatever ends it: the exit, an error, or the client going away (the
handler's end cancels the task, which then still awaits the removal). A container
whose create succeeded is never left behind, as docker's `--rm` has the daemon remove
it; not even by an agent that dies meanwhile: the restarted agent removes it once it
has exited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import structlog

from dockyard.agent.containers.convert import container_record, log_line
from dockyard.agent.containers.errors import NotFound
from dockyard.agent.containers.request import ContainerRequest
from dockyard.agent.containers.service import ContainerService
from dockyard.common.taskscope import run_to_end
from dockyard.v1 import containers_pb2 as pb

__all__ = ["run_container"]

log = structlog.get_logger(__name__)

_QUEUE = 256  # answers in flight; the container's output waits when the client is slow


async def run_container(
    manager: ContainerService, request: ContainerRequest
) -> AsyncIterator[pb.RunOutput]:
    """Yield `created`, the output, `exit`, then `removed`; errors raise."""
    queue: asyncio.Queue[pb.RunOutput] = asyncio.Queue(maxsize=_QUEUE)
    # The agent must not remove it on exit as well (the supervisor's auto-remove):
    # this call removes it after reading its exit, as the CLI did after Wait. Should the
    # agent die first, its restart removes it (`removed_by_call`).
    own = replace(request, auto_remove=False, removed_by_call=True)
    await manager.calls.open()  # nothing once open (ContainerService.start opens it)
    task, outcome = manager.calls.submit(_lifecycle(manager, own, queue), "run-call")
    getter: asyncio.Future[pb.RunOutput] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            either: set[asyncio.Future[Any]] = {getter, outcome}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()  # the task ended: what it queued, then its outcome
            while not queue.empty():
                yield queue.get_nowait()
            break
        await outcome  # its error, if any, is the call's
    finally:
        if getter is not None:
            getter.cancel()
        if not task.done():  # the client went away: the task removes the container
            task.cancel()


async def _lifecycle(
    manager: ContainerService, request: ContainerRequest, queue: asyncio.Queue[pb.RunOutput]
) -> None:
    view = await manager.create(request)
    cid = view.info.id
    try:
        await queue.put(pb.RunOutput(created=container_record(view)))
        await manager.start_container(cid)
        async for line in manager.logs(cid, follow=True):
            await queue.put(pb.RunOutput(output=log_line(line)))
        exit_info = await manager.wait(cid)
        await queue.put(
            pb.RunOutput(
                exit=pb.ContainerExit(
                    exit_code=exit_info.exit_code,
                    oom_killed=exit_info.oom_killed,
                    error=exit_info.error,
                )
            )
        )
    finally:
        await run_to_end(_remove(manager, cid))
    await queue.put(pb.RunOutput(removed=cid))


async def _remove(manager: ContainerService, cid: str) -> None:
    try:
        await manager.remove(cid, force=True)
    except NotFound:  # removed meanwhile (`docker rm -f` from elsewhere)
        pass
    except Exception as exc:  # the call's own error (or cancellation) matters more
        log.warning("container.run_remove_failed", container_id=cid, error=repr(exc))
