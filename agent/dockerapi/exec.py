"""``docker exec``: ``POST /containers/{id}/exec``, ``POST /exec/{id}/start``,
``/exec/{id}/resize``, ``GET /exec/{id}/json``.

Create only records the command (as dockerd does); start runs it with the container
service's interactive exec, hijacks the connection and relays it like attach
(``attach.relay``), or, with ``Detach``, lets it run and records its exit code. The
exec records live in memory, the newest :data:`MAX_EXECS` of them (dockerd also forgets
them with the container).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.dockerapi.attach import detach_keys, relay, terminal_size
from dockyard.agent.dockerapi.containers import _json_body
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, conflict, not_found
from dockyard.agent.dockerapi.hijack import hijack
from dockyard.agent.dockerapi.lookup import docker_errors, find_container
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.runtime.base import ContainerRuntimeError, ContainerStatus, InteractiveExec

__all__ = ["MAX_EXECS", "ExecRecord", "ExecStore", "add_routes", "lifespan"]

log = structlog.get_logger(__name__)

MAX_EXECS = 1024
_MAX_ARGS = 4096


@dataclass(slots=True)
class ExecRecord:
    """One ``docker exec``: its config, then its session and exit code."""

    id: str
    container_id: str
    cmd: list[str]
    env: list[str]
    user: str
    workdir: str
    tty: bool
    attach_stdin: bool
    attach_stdout: bool
    attach_stderr: bool
    detach_keys: str
    session: InteractiveExec | None = None
    running: bool = False
    exit_code: int | None = None
    started: bool = False

    def inspect(self) -> dict[str, Any]:
        """Docker's ``ExecInspect``."""
        return {
            "ID": self.id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "tty": self.tty,
                "entrypoint": self.cmd[0] if self.cmd else "",
                "arguments": self.cmd[1:],
                "privileged": False,
                "user": self.user,
            },
            "OpenStdin": self.attach_stdin,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": False,
            "ContainerID": self.container_id,
            "DetachKeys": self.detach_keys,
            "Pid": 0,
        }


class ExecStore:
    """The newest execs by id (older finished ones are forgotten first)."""

    def __init__(self) -> None:
        """Empty."""
        self._records: OrderedDict[str, ExecRecord] = OrderedDict()

    def add(self, record: ExecRecord) -> None:
        """Keep ``record``; forget the oldest finished ones beyond :data:`MAX_EXECS`."""
        self._records[record.id] = record
        for old in list(self._records.values()):
            if len(self._records) <= MAX_EXECS:
                break
            if not old.running:
                del self._records[old.id]

    def get(self, exec_id: str) -> ExecRecord:
        """One exec; 404 ``No such exec instance``."""
        record = self._records.get(exec_id)
        if record is None:
            raise not_found(f"No such exec instance: {exec_id}")
        return record


def _strings(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{key}: expected a list of strings")
    if len(value) > _MAX_ARGS:
        raise bad_request(f"{key}: more than {_MAX_ARGS} entries")
    return value


async def _create(
    ctx: DockerApiContext, store: ExecStore, request: web.Request, ref: str
) -> web.StreamResponse:
    body = await _json_body(request)
    if not isinstance(body, Mapping):
        raise bad_request("the exec config must be a JSON object")
    view = await find_container(ctx, ref)
    if view.info.state.status is not ContainerStatus.RUNNING:
        raise conflict(f"Container {view.info.id} is not running")
    cmd = _strings(body, "Cmd")
    if not cmd:
        raise bad_request("No exec command specified")
    if body.get("Privileged"):
        raise DockerApiError(501, "exec --privileged is not supported by dockyard")
    keys = str(body.get("DetachKeys") or "")
    detach_keys(keys)
    record = ExecRecord(
        id=secrets.token_hex(32),
        container_id=view.info.id,
        cmd=cmd,
        env=_strings(body, "Env"),
        user=str(body.get("User") or ""),
        workdir=str(body.get("WorkingDir") or ""),
        tty=bool(body.get("Tty")),
        attach_stdin=bool(body.get("AttachStdin")),
        attach_stdout=bool(body.get("AttachStdout", True)),
        attach_stderr=bool(body.get("AttachStderr", True)),
        detach_keys=keys,
    )
    store.add(record)
    return json_response({"Id": record.id}, status=201)


async def _run(ctx: DockerApiContext, record: ExecRecord, tty: bool) -> InteractiveExec:
    service = ctx.require_containers()
    with docker_errors(record.container_id):
        try:
            session = await service.exec_interactive(
                record.container_id,
                record.cmd,
                env=record.env,
                workdir=record.workdir or None,
                user=record.user or None,
                tty=tty,
            )
        except ContainerRuntimeError as exc:  # no such user, a runtime without it...
            raise conflict(str(exc)) from exc
    record.session, record.running = session, True
    return session


async def _finish(record: ExecRecord, session: InteractiveExec) -> None:
    try:
        record.exit_code = await session.wait()
    finally:
        record.running = False
        await session.close()


async def _drain(record: ExecRecord, session: InteractiveExec) -> None:
    """A detached exec: read its output away until it exits."""
    with contextlib.suppress(ContainerRuntimeError, OSError):
        async for _ in session.output():
            pass
    await _finish(record, session)


async def _start(
    ctx: DockerApiContext, store: ExecStore, request: web.Request, exec_id: str
) -> web.StreamResponse:
    record = store.get(exec_id)
    body = await _json_body(request)
    if not isinstance(body, Mapping):
        raise bad_request("the exec start config must be a JSON object")
    if record.started:
        raise conflict(f"exec {exec_id} has already been started")
    record.started = True
    tty = bool(body.get("Tty", record.tty))
    session = await _run(ctx, record, tty)
    if not record.attach_stdin:
        await session.close_stdin()  # dockerd gives such a process no stdin to read
    size = body.get("ConsoleSize")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        with contextlib.suppress(ContainerRuntimeError):
            await session.resize(size[0], size[1])
    if body.get("Detach"):
        await ctx.background.open()  # nothing once open
        ctx.background.spawn(_drain(record, session), f"exec-drain-{record.id[:12]}")
        return web.Response(status=200)
    try:
        response, conn = await hijack(request, tty)
    except BaseException:
        await session.kill()
        await _finish(record, session)
        raise
    finished = False
    try:
        detached = await relay(
            conn,
            session,
            stdin=record.attach_stdin,
            stdout=record.attach_stdout,
            stderr=record.attach_stderr,
            keys=detach_keys(record.detach_keys),
        )
        if not detached and not conn.closed.is_set():
            await _finish(record, session)
            finished = True
    finally:
        conn.close()
        if not finished:  # detached or the client hung up: the process goes too
            await session.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(_finish(record, session))
    log.info("dockerapi.exec_ended", exec_id=exec_id, exit_code=record.exit_code)
    return response


async def _resize(store: ExecStore, request: web.Request, exec_id: str) -> web.StreamResponse:
    height, width = terminal_size(request)
    record = store.get(exec_id)
    if record.session is None or not record.running:
        raise conflict(f"exec {exec_id} is not running")
    with contextlib.suppress(ContainerRuntimeError):
        await record.session.resize(height, width)
    return web.Response(status=201)


def lifespan(
    ctx: DockerApiContext,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """At the app's end: the drains of detached execs (``ctx.background``) cancelled and
    awaited (the processes go on in their containers)."""

    @contextlib.asynccontextmanager
    async def close(app: web.Application) -> AsyncIterator[None]:
        yield
        await ctx.background.close()

    return close


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The exec endpoints, over one store of exec records."""
    store = ExecStore()

    @routes.post("/containers/{id}/exec")
    async def create(request: web.Request) -> web.StreamResponse:
        return await _create(ctx, store, request, request.match_info["id"])

    @routes.post("/exec/{id}/start")
    async def start(request: web.Request) -> web.StreamResponse:
        return await _start(ctx, store, request, request.match_info["id"])

    @routes.post("/exec/{id}/resize")
    async def resize(request: web.Request) -> web.StreamResponse:
        return await _resize(store, request, request.match_info["id"])

    @routes.get("/exec/{id}/json")
    async def inspect(request: web.Request) -> web.StreamResponse:
        return json_response(store.get(request.match_info["id"]).inspect())
