"""The Attach and ExecInteractive streams: a process's stdio both ways over gRPC.

The client sends stdin bytes, resizes and the end of its input; the agent sends output
as the process writes it, then the exit code (or ``detached`` when the client typed its
detach keys, which never reach the process). Output is pulled from the process only as
fast as gRPC sends it (``context.write`` waits for flow control), so a slow client slows
the process down instead of growing a buffer; a client that goes away cancels the call,
and the session is closed (detach) or, for an exec, the process killed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from dockyard.agent.containers.detach import DetachScanner, parse_detach_keys
from dockyard.agent.containers.errors import ApiError, InvalidArgument
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.containers.status import Context, abort_with
from dockyard.agent.images.errors import ImageError
from dockyard.agent.runtime.base import ContainerRuntimeError, StdioSession
from dockyard.agent.runtime.runc.attach import check_size
from dockyard.v1 import containers_pb2 as pb

__all__ = ["MAX_STDIN_MESSAGE", "serve_attach", "serve_exec"]

log = structlog.get_logger(__name__)

MAX_STDIN_MESSAGE = 64 * 1024
"""Largest stdin chunk one message may carry."""

Write = Callable[[pb.AttachOutput], Awaitable[None]]


def _size(message: pb.TerminalSize) -> tuple[int, int]:
    try:
        check_size(message.height, message.width)
    except ContainerRuntimeError as exc:
        raise InvalidArgument("resize", str(exc)) from None
    return message.height, message.width


async def _first(inputs: AsyncIterator[Any], kind: str) -> Any:
    try:
        first = await anext(inputs)
    except StopAsyncIteration:
        raise InvalidArgument("start", "the stream ended before its start message") from None
    if first.WhichOneof("input") != "start":
        raise InvalidArgument("start", f"the first message must be {kind}'s start")
    return first.start


async def _copy_in(
    inputs: AsyncIterator[Any], session: StdioSession, scanner: DetachScanner, stdin: bool
) -> bool:
    """Client input to the process; True when the detach keys were typed."""
    async for message in inputs:
        kind = message.WhichOneof("input")
        if kind == "stdin":
            if len(message.stdin) > MAX_STDIN_MESSAGE:
                raise InvalidArgument(
                    "stdin", f"{len(message.stdin)} bytes in one message: at most 64 KiB"
                )
            data, detached = scanner.feed(message.stdin)
            if stdin and data:
                await session.write(data)
            if detached:
                return True
        elif kind == "close_stdin":
            if stdin:
                await session.close_stdin()
        elif kind == "resize":
            await session.resize(*_size(message.resize))
        else:
            raise InvalidArgument("start", "only the first message may be a start")
    if stdin:  # the client's input ended
        await session.close_stdin()
    await asyncio.Event().wait()  # the output (or a detach) ends the call
    return False


async def _copy_out(session: StdioSession, write: Write) -> None:
    async for chunk in session.output():
        if chunk.stream == "stdout":
            await write(pb.AttachOutput(stdout=chunk.data))
        else:
            await write(pb.AttachOutput(stderr=chunk.data))


async def _pump(
    inputs: AsyncIterator[Any],
    session: StdioSession,
    write: Write,
    detach_keys: str,
    stdin: bool,
    gone: asyncio.Event,
) -> bool | None:
    """Both directions until the output ends (False), the client detaches (True) or
    the call ends under us (None: the client vanished; nothing more can be sent)."""
    scanner = DetachScanner(parse_detach_keys(detach_keys))
    try:
        async with asyncio.TaskGroup() as group:
            copy_in = group.create_task(_copy_in(inputs, session, scanner, stdin))
            copy_out = group.create_task(_copy_out(session, write))
            call_over = group.create_task(gone.wait())
            await asyncio.wait({copy_in, copy_out, call_over}, return_when=asyncio.FIRST_COMPLETED)
            result = None if gone.is_set() else copy_in.done() and copy_in.result()
            for task in (copy_in, copy_out, call_over):
                task.cancel()
    except* (ApiError, ContainerRuntimeError) as group_error:
        raise group_error.exceptions[0] from None
    return result


def _call_over(context: Context) -> asyncio.Event:
    """Set when the call ends: a client that vanished (its stream may never say so,
    and an idle process writes nothing that would fail)."""
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()

    def done(_: Context) -> None:
        loop.call_soon_threadsafe(gone.set)

    context.add_done_callback(done)  # type: ignore[arg-type]  # the stubs want a class
    return gone


async def _abort_on_error(context: Context, call: Awaitable[None]) -> None:
    try:
        await call
    except (ContainerRuntimeError, ImageError, OSError) as exc:
        await abort_with(context, exc)
    except ApiError as exc:
        await abort_with(context, exc)


async def serve_attach(
    manager: ContainerService, inputs: AsyncIterator[pb.AttachInput], context: Context
) -> None:
    """The Attach call."""

    async def run() -> None:
        gone = _call_over(context)
        start = await _first(inputs, "attach")
        parse_detach_keys(start.detach_keys)  # refuse bad keys before attaching
        info, session = await manager.attach(start.container)
        if start.stdin and not info.config.open_stdin:
            await session.close()
            raise InvalidArgument("stdin", f"container {info.name} was not created with stdin open")
        try:
            await context.write(pb.AttachOutput(attached=True))
            log.info("container.attached", container_id=info.id, stdin=start.stdin)
            if start.logs:
                async for line in manager.logs(info.id):
                    if line.stream == "stdout":
                        await context.write(pb.AttachOutput(stdout=line.data))
                    else:
                        await context.write(pb.AttachOutput(stderr=line.data))
            if start.HasField("size"):
                with contextlib.suppress(ContainerRuntimeError):
                    await session.resize(*_size(start.size))
            detached = await _pump(
                inputs, session, context.write, start.detach_keys, start.stdin, gone
            )
        finally:
            await session.close()
            log.info("container.attach_released", container_id=info.id)
        if detached is None:
            log.info("container.attach_gone", container_id=info.id)
            return
        if detached:
            log.info("container.detached", container_id=info.id)
            await context.write(pb.AttachOutput(detached=True))
            return
        exit_info = await manager.wait(info.id)
        await context.write(pb.AttachOutput(exit_code=exit_info.exit_code))

    await _abort_on_error(context, run())


async def serve_exec(
    manager: ContainerService, inputs: AsyncIterator[pb.ExecInput], context: Context
) -> None:
    """The ExecInteractive call."""

    async def run() -> None:
        gone = _call_over(context)
        start = await _first(inputs, "exec")
        parse_detach_keys(start.detach_keys)
        session = await manager.exec_interactive(
            start.container,
            list(start.command),
            env=list(start.env),
            workdir=start.workdir or None,
            user=start.user or None,
            tty=start.tty,
        )
        finished = False
        try:
            await context.write(pb.AttachOutput(attached=True))
            if start.HasField("size"):
                await session.resize(*_size(start.size))
            detached = await _pump(inputs, session, context.write, start.detach_keys, True, gone)
            if detached is None:  # the client vanished: its process goes too (finally)
                return
            if detached:
                await context.write(pb.AttachOutput(detached=True))
                finished = True  # docker leaves a detached exec running
                return
            code = await session.wait()
            finished = True
            await context.write(pb.AttachOutput(exit_code=code))
        finally:
            if not finished:  # the client went away or failed: the process goes too
                await session.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(session.wait())
            await session.close()

    await _abort_on_error(context, run())
