"""Interactive ``runc exec``: stdin open, with or without a pseudo-terminal.

With a terminal, the agent allocates a pty and gives its slave to ``runc exec --tty`` as
stdio; runc makes the container's own pty and copies between the two (runc takes a
``--console-socket`` only when it detaches, and then no one could collect the exit code).
The agent reads and writes the master; a resize sets the master's size and sends runc
``SIGWINCH``, on which runc copies the size to the container's pty. We run runc directly
rather than ``conmon --exec --exec-attach``: an exec session lives only as long as its
client (it is not recovered after an agent restart, as the non-interactive exec is not),
so a monitor that outlives the agent buys nothing, and we skip conmon's attach handshake
(``_OCI_ATTACHPIPE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
import tty as tty_module
from collections.abc import AsyncIterator
from pathlib import Path

from dockyard.agent.runtime.base import ContainerRuntimeError, ExecChunk, Stream
from dockyard.agent.runtime.runc.attach import check_size

__all__ = ["PipeExec", "PtyExec", "start_interactive"]

_CHUNK = 65536
_DEFAULT_HEIGHT, _DEFAULT_WIDTH = 24, 80


def _set_winsize(fd: int, height: int, width: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class PtyExec:
    """An exec'd process on a pty whose master we hold; implements ``InteractiveExec``."""

    tty = True

    def __init__(self, proc: asyncio.subprocess.Process, master: int, process_file: Path) -> None:
        """Own ``master`` (closed with the session) and the ``runc exec`` client ``proc``."""
        self._proc = proc
        self._master = master
        self._process_file = process_file
        os.set_blocking(master, False)

    async def _ready(self, writer: bool) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not ready.done():
                ready.set_result(None)

        if writer:
            loop.add_writer(self._master, done)
        else:
            loop.add_reader(self._master, done)
        try:
            await ready
        finally:
            if writer:
                loop.remove_writer(self._master)
            else:
                loop.remove_reader(self._master)

    async def output(self) -> AsyncIterator[ExecChunk]:
        """What the process writes to its terminal, until every holder of the slave closes
        it (the kernel then answers EIO)."""
        while self._master >= 0:
            try:
                data = os.read(self._master, _CHUNK)
            except BlockingIOError:
                await self._ready(writer=False)
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return
                raise
            if not data:
                return
            yield ExecChunk("stdout", data)

    async def write(self, data: bytes) -> None:
        """Type into the terminal."""
        view = memoryview(data)
        while view and self._master >= 0:
            try:
                sent = os.write(self._master, view)
            except BlockingIOError:
                await self._ready(writer=True)
                continue
            except OSError as exc:
                raise ContainerRuntimeError(f"exec terminal closed: {exc}") from exc
            view = view[sent:]

    async def close_stdin(self) -> None:
        """A terminal has no end-of-file of its own: the client sends ``^D`` if it wants."""

    async def resize(self, height: int, width: int) -> None:
        """Size our terminal, then SIGWINCH runc: it copies the size to the container's."""
        check_size(height, width)
        if self._master >= 0:
            _set_winsize(self._master, height, width)
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGWINCH)

    async def wait(self) -> int:
        """The process's exit code (runc passes it through)."""
        try:
            return await self._proc.wait()
        finally:
            await asyncio.to_thread(self._process_file.unlink, missing_ok=True)

    async def kill(self) -> None:
        """Kill the ``runc exec`` client; runc kills the process with it."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def close(self) -> None:
        """Release the master (the process gets SIGHUP when its terminal goes)."""
        if self._master >= 0:
            fd, self._master = self._master, -1
            os.close(fd)


class PipeExec:
    """An exec'd process with stdin/stdout/stderr pipes; implements ``InteractiveExec``."""

    tty = False

    def __init__(self, proc: asyncio.subprocess.Process, process_file: Path) -> None:
        """Wrap a started ``runc exec`` with three pipes."""
        self._proc = proc
        self._process_file = process_file

    async def output(self) -> AsyncIterator[ExecChunk]:
        """stdout and stderr as they come (a one-slot queue: no unbounded buffer)."""
        queue: asyncio.Queue[ExecChunk | None] = asyncio.Queue(maxsize=1)

        async def pump(stream: Stream, reader: asyncio.StreamReader | None) -> None:
            if reader is not None:
                while chunk := await reader.read(_CHUNK):
                    await queue.put(ExecChunk(stream, chunk))
            await queue.put(None)

        async with asyncio.TaskGroup() as group:
            pumps = [
                group.create_task(pump("stdout", self._proc.stdout)),
                group.create_task(pump("stderr", self._proc.stderr)),
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
                for task in pumps:
                    task.cancel()

    async def write(self, data: bytes) -> None:
        """Write to the process's stdin."""
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            return
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ContainerRuntimeError(f"exec stdin closed: {exc}") from exc

    async def close_stdin(self) -> None:
        """The process reads end-of-file."""
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def resize(self, height: int, width: int) -> None:
        """No terminal: nothing to resize."""

    async def wait(self) -> int:
        """The process's exit code."""
        try:
            return await self._proc.wait()
        finally:
            await asyncio.to_thread(self._process_file.unlink, missing_ok=True)

    async def kill(self) -> None:
        """Kill the ``runc exec`` client."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def close(self) -> None:
        """Close our end of stdin."""
        await self.close_stdin()


async def start_interactive(
    runc: str, runc_root: Path, container_id: str, process_file: Path, tty: bool
) -> PtyExec | PipeExec:
    """Start ``runc exec`` of ``process_file`` (whose ``terminal`` matches ``tty``)."""
    base = [runc, "--root", str(runc_root), "exec", "--process", str(process_file)]
    if not tty:
        proc = await asyncio.create_subprocess_exec(
            *base,
            container_id,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return PipeExec(proc, process_file)
    master, slave = os.openpty()
    try:
        tty_module.setraw(slave)  # runc does too; bytes pass through unchanged both ways
        _set_winsize(master, _DEFAULT_HEIGHT, _DEFAULT_WIDTH)
        proc = await asyncio.create_subprocess_exec(
            *base,
            "--tty",
            container_id,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # runc holds it now: its exit gives us EIO on the master
    return PtyExec(proc, master, process_file)
