"""Docker's hijacked connection: after the response head, the HTTP connection is a raw
two-way byte stream (attach, exec start).

A client that sends ``Connection: Upgrade`` + ``Upgrade: tcp`` (the docker CLI, the
Python SDK) gets ``101 UPGRADED``; one that does not gets ``200 OK``; either way the
content type says how the output is framed (``vnd.docker.raw-stream`` for a TTY,
``vnd.docker.multiplexed-stream`` otherwise). Once the head is written the socket is
taken from aiohttp (``transport.set_protocol``): its input is stdin, its output the
process's. The client half-closes its side when its stdin ends (``CloseWrite``); the
connection stays open for output until we close it.

Both directions are bounded: input beyond :data:`READ_LIMIT` pauses reading from the
socket; output waits for the transport's buffer to drain (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.dockerapi.stream import MULTIPLEXED, RAW_STREAM

__all__ = ["READ_LIMIT", "HijackResponse", "HijackedConnection", "hijack", "wants_upgrade"]

log = structlog.get_logger(__name__)

READ_LIMIT = 256 * 1024
"""Most stdin bytes buffered before the socket stops being read."""


class HijackResponse(web.StreamResponse):
    """A response whose body is not framed (no chunked encoding, no length): the
    socket carries the raw stream after the head, as a WebSocket's does."""

    _length_check = False


def wants_upgrade(request: web.Request) -> bool:
    """The client asked for ``Upgrade: tcp`` (the docker CLI and SDKs do)."""
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "tcp"


class HijackedConnection(asyncio.Protocol):
    """The socket after the head: read stdin, write output, close."""

    def __init__(self, transport: asyncio.Transport, previous: Any, pending: bytes) -> None:
        """Take ``transport`` over from aiohttp's protocol ``previous``; ``pending`` are
        bytes aiohttp had already received after the request."""
        self._transport = transport
        self._previous = previous
        self._buffer = bytearray(pending)
        self._eof = False
        self._lost = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused_reading = False
        self.closed = asyncio.Event()
        """Set when the socket is gone (the client hung up, or we closed it)."""
        if pending:
            self._readable.set()

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._readable.set()
        if len(self._buffer) >= READ_LIMIT and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        """The client's CloseWrite: stdin ended; keep the socket open for output."""
        self._eof = True
        self._readable.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        self._readable.set()
        self._writable.set()
        self.closed.set()
        with contextlib.suppress(Exception):  # let aiohttp's handler finish its bookkeeping
            self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- for handlers

    async def read(self) -> bytes:
        """Some stdin bytes; ``b""`` once the client closed its side."""
        while not self._buffer:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._paused_reading and not self._lost:
            self._paused_reading = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send output; waits while the client is not reading (bounded buffer)."""
        if self._lost:
            raise ConnectionResetError("the client went away")
        self._transport.write(data)
        await self._writable.wait()

    def close(self) -> None:
        """Close the socket (the stream is over)."""
        if not self._transport.is_closing():
            self._transport.close()


async def hijack(request: web.Request, tty: bool) -> tuple[HijackResponse, HijackedConnection]:
    """Answer the head (101 or 200) and take the socket over; the handler returns the
    response (already sent) when the stream is over."""
    upgrade = wants_upgrade(request)
    response = HijackResponse(
        status=101 if upgrade else 200, reason="UPGRADED" if upgrade else "OK"
    )
    response.headers["Content-Type"] = RAW_STREAM if tty else MULTIPLEXED
    if upgrade:
        response.headers["Connection"] = "Upgrade"
        response.headers["Upgrade"] = "tcp"
    else:
        response.force_close()
    writer = await response.prepare(request)
    send_headers = getattr(writer, "send_headers", None)
    if send_headers is not None:
        send_headers()
    transport = request.transport
    protocol = request.protocol
    if transport is None:
        raise ConnectionResetError("the client went away before the stream began")
    pending = bytes(getattr(protocol, "_message_tail", b""))  # bytes after the request
    connection = HijackedConnection(transport, protocol, pending)
    transport.set_protocol(connection)
    log.debug("dockerapi.hijacked", path=request.path, upgrade=upgrade)
    return response, connection
