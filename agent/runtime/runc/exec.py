"""A process run in a container with ``runc exec --process``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from dockyard.agent.runtime.base import ExecChunk, ExecResult, Stream

__all__ = ["RuncExecSession", "start_exec"]


class RuncExecSession:
    """Output stream and exit code of one ``runc exec``; implements ``ExecSession``."""

    def __init__(self, proc: asyncio.subprocess.Process, process_file: Path) -> None:
        """Wrap a started ``runc exec`` whose stdout/stderr are pipes."""
        self._proc = proc
        self._process_file = process_file

    async def output(self) -> AsyncIterator[ExecChunk]:
        """Chunks of stdout and stderr as they come, until both are closed."""
        queue: asyncio.Queue[ExecChunk | None] = asyncio.Queue()

        async def pump(stream: Stream, reader: asyncio.StreamReader | None) -> None:
            if reader is not None:
                while chunk := await reader.read(65536):
                    await queue.put(ExecChunk(stream, chunk))
            await queue.put(None)

        tasks = [
            asyncio.create_task(pump("stdout", self._proc.stdout)),
            asyncio.create_task(pump("stderr", self._proc.stderr)),
        ]
        try:
            open_streams = 2
            while open_streams:
                item = await queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> int:
        """Exit code of the exec'd process (runc passes it through; 128+N for signal N)."""
        try:
            return await self._proc.wait()
        finally:
            await asyncio.to_thread(self._process_file.unlink, missing_ok=True)

    async def collect(self) -> ExecResult:
        """All output and the exit code."""
        stdout, stderr = await self._proc.communicate()
        code = await self.wait()
        return ExecResult(exit_code=code, stdout=stdout, stderr=stderr)

    async def kill(self) -> None:
        """Kill the ``runc exec`` client (the process in the container gets SIGKILL)."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()


async def start_exec(
    runc: str, runc_root: Path, container_id: str, process_file: Path
) -> RuncExecSession:
    """Start ``runc exec`` of the process described in ``process_file``."""
    proc = await asyncio.create_subprocess_exec(
        runc,
        "--root",
        str(runc_root),
        "exec",
        "--process",
        str(process_file),
        container_id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return RuncExecSession(proc, process_file)
