"""What an agent on Docker's engine serves of the Containers API: `Logs`, so that
`dockyard service logs` reads its tasks as it reads runc ones. Everything else about
those containers is the engine's own (use `docker` against it): UNIMPLEMENTED here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import grpc

from dockyard.agent.runtime.docker import DockerRuntime
from dockyard.agent.runtime.docker.runtime import engine_time
from dockyard.v1.containers_pb2 import LogLine, LogsRequest

__all__ = ["DockerLogsServicer", "parse_line"]

Context = grpc.aio.ServicerContext[Any, Any]
_STREAMS = ("stdout", "stderr")


def parse_line(stream: str, text: str) -> LogLine:
    """One engine log line (`--timestamps`: `2026-11-28T01:02:03.123456789Z text`)."""
    stamp, _, rest = text.partition(" ")
    line = LogLine(stream=stream, data=rest.encode())
    when = engine_time(stamp)
    if when is not None:
        line.timestamp.FromDatetime(when)
    return line


class DockerLogsServicer:
    """Containers.Logs over the engine's API."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._runtime = runtime

    def handler(self) -> grpc.GenericRpcHandler:
        """Only Logs: grpc answers UNIMPLEMENTED for the other Containers methods."""
        return grpc.method_handlers_generic_handler(
            "dockyard.v1.Containers",
            {
                "Logs": grpc.unary_stream_rpc_method_handler(
                    self.Logs,
                    request_deserializer=LogsRequest.FromString,
                    response_serializer=LogLine.SerializeToString,
                ),
            },
        )

    async def Logs(self, request: LogsRequest, context: Context) -> AsyncIterator[LogLine]:
        if not request.container or len(request.container) > 128:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "container: a container ID or name is required"
            )
        container = self._runtime.docker.containers.container(request.container)
        params: dict[str, Any] = {
            "timestamps": True,
            "tail": str(request.tail) if request.has_tail else "all",
        }
        if request.HasField("since"):
            params["since"] = request.since.seconds
        try:
            await container.show()
        except aiodocker.DockerError as exc:
            code = grpc.StatusCode.NOT_FOUND if exc.status == 404 else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, f"container {request.container[:80]}: {exc.message}")
        if request.follow:
            async for line in self._follow(container, params):
                yield line
            return
        lines = []
        for stream in _STREAMS:
            chunks = await container.log(
                stdout=stream == "stdout", stderr=stream == "stderr", **params
            )
            lines += [parse_line(stream, t) for c in chunks for t in c.splitlines() if t]
        lines.sort(key=lambda line: (line.timestamp.seconds, line.timestamp.nanos))
        for line in lines:
            yield line

    @staticmethod
    async def _follow(container: Any, params: dict[str, Any]) -> AsyncIterator[LogLine]:
        """Both streams as they come (the engine sends them apart)."""
        queue: asyncio.Queue[LogLine | None] = asyncio.Queue(maxsize=1024)

        async def pump(stream: str) -> None:
            try:
                async for chunk in container.log(
                    stdout=stream == "stdout", stderr=stream == "stderr", follow=True, **params
                ):
                    for text in chunk.splitlines():
                        if text:
                            await queue.put(parse_line(stream, text))
            finally:
                await queue.put(None)

        async with asyncio.TaskGroup() as group:  # a failing pump ends the stream with it
            pumps = [group.create_task(pump(stream)) for stream in _STREAMS]
            try:
                ended = 0
                while ended < len(pumps):
                    item = await queue.get()
                    if item is None:
                        ended += 1
                    else:
                        yield item
            finally:
                for task in pumps:
                    task.cancel()
