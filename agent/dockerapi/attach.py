"""``POST /containers/{id}/attach`` and ``/resize``: ``docker attach``, ``docker run -it``.

Attach hijacks the connection (``hijack.py``) and relays the container's stdio: stdin
from the socket (the daemon's detach keys, ``ctrl-p,ctrl-q`` unless ``detachKeys``
says otherwise, end the attach and never reach the process), output to the socket as
raw bytes for a TTY container and as 8-byte multiplexed frames otherwise. The docker
CLI attaches *before* it starts the container: the runtime connects such an attach when
the container starts, before its process runs, so nothing is lost. The stream ends when
the container exits, the client detaches or hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from dockyard.agent.containers.detach import DetachScanner, parse_detach_keys
from dockyard.agent.containers.errors import ApiError
from dockyard.agent.dockerapi.containers import flag, int_param
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, conflict
from dockyard.agent.dockerapi.hijack import HijackedConnection, hijack
from dockyard.agent.dockerapi.lookup import docker_errors, find_container
from dockyard.agent.dockerapi.stream import STDERR, STDOUT, frame
from dockyard.agent.runtime.base import ContainerRuntimeError, ContainerStatus, StdioSession
from dockyard.agent.runtime.runc.attach import MAX_TERMINAL_SIZE

__all__ = ["add_routes", "relay", "terminal_size"]

log = structlog.get_logger(__name__)


def terminal_size(request: web.Request) -> tuple[int, int]:
    """``h`` and ``w`` of a resize; 400 when missing or out of range."""
    height, width = int_param(request, "h"), int_param(request, "w")
    if height is None or width is None:
        raise bad_request("resize needs h and w")
    if not (0 <= height <= MAX_TERMINAL_SIZE and 0 <= width <= MAX_TERMINAL_SIZE):
        raise bad_request(f"h and w must be 0..{MAX_TERMINAL_SIZE}, got {height}x{width}")
    return height, width


def detach_keys(text: str) -> bytes:
    """Docker's ``detachKeys``; 400 naming a bad one."""
    try:
        return parse_detach_keys(text, "detachKeys")
    except ApiError as exc:
        raise bad_request(str(exc)) from None


async def _copy_in(
    conn: HijackedConnection, session: StdioSession, scanner: DetachScanner, stdin: bool
) -> bool:
    """Socket to stdin; True when the detach keys arrived."""
    while data := await conn.read():
        data, detached = scanner.feed(data)
        if stdin and data:
            await session.write(data)
        if detached:
            return True
    if stdin:  # the client's CloseWrite: its stdin ended
        await session.close_stdin()
    await conn.closed.wait()  # output (or the hang-up) ends the stream
    return False


async def _copy_out(
    conn: HijackedConnection, session: StdioSession, stdout: bool, stderr: bool
) -> None:
    async for chunk in session.output():
        if (chunk.stream == "stdout" and not stdout) or (chunk.stream == "stderr" and not stderr):
            continue
        if session.tty:
            await conn.write(chunk.data)
        else:
            await conn.write(frame(STDOUT if chunk.stream == "stdout" else STDERR, chunk.data))


async def relay(
    conn: HijackedConnection,
    session: StdioSession,
    *,
    stdin: bool,
    stdout: bool = True,
    stderr: bool = True,
    keys: bytes = b"",
) -> bool:
    """Both directions until the output ends (False) or the client detaches (True); a
    client that hangs up ends it too."""
    scanner = DetachScanner(keys)
    detached = False
    try:
        async with asyncio.TaskGroup() as group:
            copy_in = group.create_task(_copy_in(conn, session, scanner, stdin))
            copy_out = group.create_task(_copy_out(conn, session, stdout, stderr))
            await asyncio.wait({copy_in, copy_out}, return_when=asyncio.FIRST_COMPLETED)
            detached = copy_in.done() and copy_in.result()
            copy_in.cancel()
            copy_out.cancel()
    except* (ConnectionError, ContainerRuntimeError) as failed:
        log.debug("dockerapi.stream_ended", error=str(failed.exceptions[0]))
    return detached


async def _replay_logs(
    ctx: DockerApiContext, conn: HijackedConnection, container_id: str, tty: bool
) -> None:
    async for line in ctx.require_containers().logs(container_id):
        data = line.data
        await conn.write(
            data if tty else frame(STDOUT if line.stream == "stdout" else STDERR, data)
        )


async def _attach(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    service = ctx.require_containers()
    view = await find_container(ctx, ref)
    info = view.info
    stdin = flag(request, "stdin")
    keys = detach_keys(request.query.get("detachKeys", ""))
    if not flag(request, "stream") and not flag(request, "logs"):
        raise bad_request("attach needs stream or logs")
    if info.state.status is ContainerStatus.DEAD:
        raise conflict(f"container {info.id} is dead: cannot attach")
    session: StdioSession | None = None
    if flag(request, "stream"):
        with docker_errors(ref):
            try:
                _, session = await service.attach(info.id)
            except ContainerRuntimeError as exc:  # a runtime without attach
                raise conflict(str(exc)) from exc
    tty = info.config.tty
    try:
        response, conn = await hijack(request, tty)
    except BaseException:
        if session is not None:
            await session.close()
        raise
    try:
        if flag(request, "logs"):
            await _replay_logs(ctx, conn, info.id, tty)
        if session is not None:
            detached = await relay(
                conn,
                session,
                stdin=stdin and info.config.open_stdin,
                stdout=flag(request, "stdout"),
                stderr=flag(request, "stderr"),
                keys=keys,
            )
            log.info("dockerapi.attach_ended", container_id=info.id, detached=detached)
    except ConnectionError:
        pass
    finally:
        if session is not None:
            await session.close()
        conn.close()
    return response


async def _resize(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    height, width = terminal_size(request)
    view = await find_container(ctx, ref)
    with docker_errors(ref), contextlib.suppress(ContainerRuntimeError):
        await ctx.require_containers().resize(view.info.id, height, width)
    return web.Response(status=200)


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """Attach and resize."""

    @routes.post("/containers/{id}/attach")
    async def attach(request: web.Request) -> web.StreamResponse:
        return await _attach(ctx, request, request.match_info["id"])

    @routes.post("/containers/{id}/resize")
    async def resize(request: web.Request) -> web.StreamResponse:
        return await _resize(ctx, request, request.match_info["id"])

    @routes.get("/containers/{id}/attach/ws")
    async def attach_ws(request: web.Request) -> web.StreamResponse:
        raise DockerApiError(
            501, "GET /containers/{id}/attach/ws (attach over a WebSocket) is not supported"
        )
