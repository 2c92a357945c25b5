"""Attach to a container's stdio through conmon's ``attach`` socket; resize its terminal.

conmon listens on ``<bundle>/attach`` (a ``SOCK_SEQPACKET`` unix socket). Every packet it
sends is one byte naming the stream (2 stdout, 3 stderr) followed by the data; every
packet a client sends goes to the container's stdin as it is. A client that shuts down
its write side (or goes away) makes conmon close the container's stdin unless conmon was
started with ``--leave-stdin-open``. A terminal is resized with the line ``1 H W`` on the
``<bundle>/ctl`` fifo (``2`` asks for the log to be reopened). See conmon's
``src/conn_sock.c`` and ``src/ctrl.c``, and podman's ``libpod/oci_conmon_attach_linux.go``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from dockyard.agent.runtime.base import ContainerRuntimeError, ExecChunk, InvalidConfig

__all__ = [
    "MAX_TERMINAL_SIZE",
    "ConmonAttach",
    "LateAttach",
    "check_size",
    "connect_attach",
    "write_resize",
]

log = structlog.get_logger(__name__)

_PACKET = 65536
"""Receive buffer: larger than conmon's packets (8 KiB of output + the stream byte)."""
_STDIN_CHUNK = 4096
"""conmon reads one packet into a fixed buffer; a longer one would be cut."""
MAX_TERMINAL_SIZE = 1000
"""conmon refuses larger sizes."""
_STREAMS = {2: "stdout", 3: "stderr"}  # podman: AttachPipeStdout 2, AttachPipeStderr 3


def check_size(height: int, width: int) -> None:
    """Refuse a terminal size conmon (and a sane pty) would not take."""
    for name, value in (("height", height), ("width", width)):
        if not 0 <= value <= MAX_TERMINAL_SIZE:
            raise InvalidConfig(f"terminal {name} {value} is out of range 0..{MAX_TERMINAL_SIZE}")


def _connect(bundle: Path) -> socket.socket:
    # The bundle's path can be longer than a unix socket address (108 bytes): name the
    # socket through an O_PATH descriptor of its directory, as conmon itself does.
    dir_fd = os.open(bundle, os.O_PATH | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dir_fd}/attach")
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ContainerRuntimeError(f"cannot attach: conmon's attach socket: {exc}") from exc
    finally:
        os.close(dir_fd)
    return sock


async def connect_attach(bundle: Path, tty: bool) -> ConmonAttach:
    """Connect to the attach socket conmon made in ``bundle``."""
    sock = await asyncio.to_thread(_connect, bundle)
    return ConmonAttach(sock, bundle / "ctl", tty)


def write_resize(ctl_fifo: Path, height: int, width: int) -> None:
    """Ask conmon to resize the container's terminal (one line, atomic on a fifo)."""
    check_size(height, width)
    try:
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # no reader: conmon is gone
        raise ContainerRuntimeError(f"cannot resize: conmon's control fifo: {exc}") from exc
    try:
        os.write(fd, f"1 {height} {width}\n".encode())
    finally:
        os.close(fd)


class ConmonAttach:
    """One client of conmon's attach socket; implements ``StdioSession``."""

    def __init__(self, sock: socket.socket, ctl_fifo: Path, tty: bool) -> None:
        """Wrap a connected, non-blocking attach socket."""
        self._sock = sock
        self._ctl = ctl_fifo
        self.tty = tty
        self._closed = False
        self._reading = False

    async def output(self) -> AsyncIterator[ExecChunk]:
        """Packets from conmon until it closes (the container exited) or we detach."""
        loop = asyncio.get_running_loop()
        self._reading = True
        try:
            while not self._closed:
                try:
                    packet = await loop.sock_recv(self._sock, _PACKET)
                except OSError:
                    return
                if not packet:
                    return
                stream = _STREAMS.get(packet[0])
                if stream is not None and len(packet) > 1:
                    yield ExecChunk(stream, packet[1:])  # type: ignore[arg-type]
        finally:
            # The output ended (the container exited, or we detached): the session is over.
            self._reading = False
            self._closed = True
            self._sock.close()

    async def write(self, data: bytes) -> None:
        """Send stdin bytes, one packet per chunk conmon's buffer takes."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        for start in range(0, len(view), _STDIN_CHUNK):
            try:
                await loop.sock_sendall(self._sock, view[start : start + _STDIN_CHUNK])
            except OSError as exc:
                raise ContainerRuntimeError(f"container stdin closed: {exc}") from exc

    async def close_stdin(self) -> None:
        """Half-close: conmon closes the container's stdin (unless it leaves it open)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, height: int, width: int) -> None:
        """Resize the container's terminal through conmon's control fifo."""
        if self.tty:
            await asyncio.to_thread(write_resize, self._ctl, height, width)

    async def close(self) -> None:
        """Detach: close our socket; the container keeps running."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            # Wakes a pending read with end-of-file; the reader then closes the socket.
            self._sock.shutdown(socket.SHUT_RDWR)
        if not self._reading:
            self._sock.close()


class LateAttach:
    """An attach to a container that has not started yet; implements ``StdioSession``.

    The runtime connects it when the container starts, after ``runc create`` and before
    ``runc start``: the process has not run, so none of its output is missed.
    """

    def __init__(self, tty: bool, forget: Callable[[LateAttach], None]) -> None:
        """``forget`` drops this attach from the runtime's pending list (on close)."""
        self.tty = tty
        self._forget = forget
        self._connected: asyncio.Future[ConmonAttach] = asyncio.get_running_loop().create_future()

    def connect(self, session: ConmonAttach) -> bool:
        """The container started: hand over its attach socket; False when this attach
        was closed meanwhile (the caller closes `session`)."""
        if self._connected.done():
            return False
        self._connected.set_result(session)
        return True

    def fail(self, error: Exception) -> None:
        """The container went away before it started: the attach ends with `error`."""
        if not self._connected.done():
            self._connected.set_exception(error)
            self._connected.exception()  # retrieved: no warning when nobody was waiting

    async def _session(self) -> ConmonAttach:
        return await asyncio.shield(self._connected)

    async def output(self) -> AsyncIterator[ExecChunk]:
        """The container's output once it starts."""
        session = await self._session()
        async for chunk in session.output():
            yield chunk

    async def write(self, data: bytes) -> None:
        """Stdin, sent once the container starts."""
        await (await self._session()).write(data)

    async def close_stdin(self) -> None:
        """Half-close, once the container starts."""
        await (await self._session()).close_stdin()

    async def resize(self, height: int, width: int) -> None:
        """Resize, once the container starts."""
        check_size(height, width)
        await (await self._session()).resize(height, width)

    async def close(self) -> None:
        """Detach, connected or not."""
        connected = self._connected
        if connected.done() and not connected.cancelled() and connected.exception() is None:
            await connected.result().close()
        else:
            self._connected.cancel()
            self._forget(self)
