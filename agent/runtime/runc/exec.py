"""A process run in a container with ``runc exec --process``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from dockyard.agent.runtime.base import ExecChunk, ExecResult, Stream
from dockyard.agent.runtime.runc import files
from dockyard.agent.runtime.runc.records import ContainerDir
from dockyard.agent.runtime.runc.spec import build_process, merge_env, resolve_user

__all__ = ["RuncExecSession", "start_exec", "write_exec_process"]


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


async def write_exec_process(
    cdir: ContainerDir,
    cmd: Sequence[str],
    env: Sequence[str],
    workdir: str | None,
    user: str | None,
    tty: bool,
) -> Path:
    """Write a ``runc exec --process`` file: the container's env/caps, overridden."""
    spec = await asyncio.to_thread(files.read_json, cdir.spec)
    base = spec["process"]
    if user is None:
        resolved_user = files.user_from_spec(base)
    else:
        passwd, group = await asyncio.to_thread(files.read_user_db, cdir.rootfs)
        resolved_user = resolve_user(user, passwd, group)
    process = build_process(
        cmd,
        merge_env(base["env"], env),
        workdir or base["cwd"],
        resolved_user,
        caps=base["capabilities"]["bounding"],
        nofile=base["rlimits"][0]["hard"],
        terminal=tty,
    )
    process_file = cdir.base / f"exec-{uuid.uuid4().hex[:12]}.json"
    await asyncio.to_thread(files.write_json, process_file, process)
    return process_file
