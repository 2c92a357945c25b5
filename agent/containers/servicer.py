"""The `Containers` gRPC service: one agent's containers, as `docker -H` drives dockerd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from dockyard.agent.containers.admission import Admission
from dockyard.agent.containers.convert import container_record, log_line, stats_message
from dockyard.agent.containers.errors import InvalidArgument
from dockyard.agent.containers.request import parse_create
from dockyard.agent.containers.run_call import run_container
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.containers.status import Context, streaming, unary
from dockyard.agent.containers.stdio_stream import serve_attach, serve_exec
from dockyard.agent.runtime.runc.attach import MAX_TERMINAL_SIZE
from dockyard.v1 import containers_pb2 as pb
from dockyard.v1 import containers_pb2_grpc

__all__ = ["ContainersServicer"]


class ContainersServicer(containers_pb2_grpc.ContainersServicer):
    """Thin layer over :class:`ContainerService`: messages in, messages out."""

    def __init__(self, manager: ContainerService, admission: Admission | None = None) -> None:
        self._manager = manager
        self._admission = admission or Admission()

    @unary
    async def Create(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.ContainerRecord:
        parsed = parse_create(request)  # a malformed request is INVALID_ARGUMENT, policy or not
        self._admission.check(request)
        return container_record(await self._manager.create(parsed))

    @unary
    async def Start(self, request: pb.ContainerRef, context: Context) -> pb.ContainerRecord:
        return container_record(await self._manager.start_container(request.container))

    @unary
    async def Wait(self, request: pb.ContainerRef, context: Context) -> pb.ContainerExit:
        exit_info = await self._manager.wait(request.container)
        return pb.ContainerExit(
            exit_code=exit_info.exit_code, oom_killed=exit_info.oom_killed, error=exit_info.error
        )

    @unary
    async def Stop(self, request: pb.StopContainerRequest, context: Context) -> pb.ContainerRecord:
        timeout = request.timeout_seconds if request.has_timeout else None
        return container_record(await self._manager.stop(request.container, timeout))

    @unary
    async def Kill(self, request: pb.KillContainerRequest, context: Context) -> pb.ContainerRecord:
        return container_record(await self._manager.kill(request.container, request.signal))

    @unary
    async def Remove(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        removed = await self._manager.remove(request.container, request.force)
        return pb.RemoveContainerResponse(id=removed)

    @unary
    async def List(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        views = await self._manager.list(all=request.all)
        return pb.ListContainersResponse(containers=[container_record(v) for v in views])

    @unary
    async def Inspect(self, request: pb.ContainerRef, context: Context) -> pb.ContainerRecord:
        return container_record(await self._manager.inspect(request.container))

    @streaming
    async def Logs(self, request: pb.LogsRequest, context: Context) -> AsyncIterator[pb.LogLine]:
        since = _since(request)
        lines = self._manager.logs(
            request.container,
            follow=request.follow,
            tail=request.tail if request.has_tail else None,
            since=since,
            timestamps=request.timestamps,
        )
        async for line in lines:
            yield log_line(line)

    @streaming
    async def Run(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> AsyncIterator[pb.RunOutput]:
        request.auto_remove = True  # as `run --rm`: a restart policy is refused
        parsed = parse_create(request)
        self._admission.check(request)
        async for item in run_container(self._manager, parsed):
            yield item

    @streaming
    async def Exec(self, request: pb.ExecRequest, context: Context) -> AsyncIterator[pb.ExecOutput]:
        session = await self._manager.exec(
            request.container,
            list(request.command),
            env=list(request.env),
            workdir=request.workdir or None,
            user=request.user or None,
        )
        finished = False
        try:
            async for chunk in session.output():
                if chunk.stream == "stdout":
                    yield pb.ExecOutput(stdout=chunk.data)
                else:
                    yield pb.ExecOutput(stderr=chunk.data)
            code = await session.wait()
            finished = True
            yield pb.ExecOutput(exit_code=code)
        finally:
            if not finished:  # the client went away
                await session.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(session.wait())

    # grpc.aio streams a handler's answers either as an iterator or through
    # `context.write`; these two use `write` (it waits for flow control, which bounds the
    # output in flight) and return nothing, which the generated stubs do not describe.
    async def Attach(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.AttachInput], context: Context
    ) -> None:
        await serve_attach(self._manager, request_iterator, context)

    async def ExecInteractive(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ExecInput], context: Context
    ) -> None:
        await serve_exec(self._manager, request_iterator, context)

    @unary
    async def Resize(self, request: pb.ResizeRequest, context: Context) -> pb.ContainerRecord:
        size = request.size
        if not (0 <= size.height <= MAX_TERMINAL_SIZE and 0 <= size.width <= MAX_TERMINAL_SIZE):
            raise InvalidArgument("size", f"height and width must be 0..{MAX_TERMINAL_SIZE}")
        view = await self._manager.resize(request.container, size.height, size.width)
        return container_record(view)

    @unary
    async def Stats(self, request: pb.ContainerRef, context: Context) -> pb.ContainerStats:
        return stats_message(await self._manager.stats(request.container))


def _since(request: pb.LogsRequest) -> datetime | None:
    if not request.HasField("since"):
        return None
    try:
        return request.since.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:  # out of the range a datetime holds
        raise InvalidArgument("since", str(exc)) from None
