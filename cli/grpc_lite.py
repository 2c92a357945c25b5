"""A small blocking gRPC client for unary calls: HTTP/2 over a socket (TLS from `ssl`).

The fast path (`cli/fast.py`) uses it instead of grpcio, whose import alone costs more
than the whole fast command. It does only what those calls need: a few unary calls
sent at once on one connection, answers read until each stream ends. Anything it does
not expect (a compressed message, a GOAWAY, a reset stream, a frame out of place) is
a `ProtocolError`, after which the caller falls back to the full client.

TLS is as strict as grpcio's: the server's chain must lead to the given CA, the
certificate must name `server_name` (or the address's host), the client presents its
certificate, TLS 1.2 at least, and the server must agree to speak HTTP/2 (ALPN h2).
"""

from __future__ import annotations

import socket
import struct
import time
from types import TracebackType

from dockyard.cli import hpack_lite

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:  # ssl loads only for a TLS target; targets (dataclasses) not at all
    import ssl

    from dockyard.cli.fast import QuickTLS
    from dockyard.cli.targets import TLSFiles

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, CONTINUATION = (
    0,
    1,
    3,
    4,
    5,
    6,
    7,
    9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
OK, UNIMPLEMENTED = 0, 12


class ProtocolError(Exception):
    """The server answered in a way this client does not handle."""


class Reply:
    """One call's answer: its gRPC status, its message (if OK) and its metadata."""

    __slots__ = ("message", "metadata", "payload", "status")

    def __init__(
        self,
        status: int,
        message: str = "",
        payload: bytes = b"",
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status, self.message, self.payload = status, message, payload
        self.metadata = metadata if metadata is not None else []


class _Stream:
    __slots__ = ("blocks", "data", "ended", "path", "pending")

    def __init__(self, path: str) -> None:
        self.path = path
        self.blocks: list[list[tuple[str, str]]] = []
        self.pending = bytearray()
        self.data = bytearray()
        self.ended = False


def host_of(address: str) -> str:
    """The host part of HOST:PORT ([v6]:PORT too)."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def tls_context(tls: TLSFiles | QuickTLS) -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    return context


class Connection:
    """One HTTP/2 connection to `address`; `calls` sends unary requests on it."""

    def __init__(
        self, address: str, tls: TLSFiles | QuickTLS | None, server_name: str, timeout: float
    ) -> None:
        self.authority = server_name if tls is not None else address
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        host, _, port = address.rpartition(":")
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                self.sock: socket.socket = tls_context(tls).wrap_socket(
                    raw, server_hostname=server_name
                )
                if self.sock.selected_alpn_protocol() != "h2":
                    raise ProtocolError("the server did not agree to HTTP/2")
            else:
                self.sock = raw
        except BaseException:
            raw.close()
            raise
        self.scheme = "https" if tls is not None else "http"
        self.decoder = hpack_lite.Decoder()
        self.buffer = bytearray()
        self.next_id = 1

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def calls(self, requests: list[tuple[str, bytes]]) -> list[Reply]:
        """Send each (path, serialized request) at once, then wait for every answer."""
        out = bytearray()
        if self.next_id == 1:
            out += PREFACE
            settings = struct.pack(">HIHI", 0x2, 0, 0x4, MAX_WINDOW)  # no push; big window
            out += _frame(SETTINGS, 0, 0, settings)
            out += _frame(0x8, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        streams: dict[int, _Stream] = {}
        for path, body in requests:
            stream_id, self.next_id = self.next_id, self.next_id + 2
            streams[stream_id] = _Stream(path)
            out += _frame(HEADERS, END_HEADERS, stream_id, self._headers(path))
            message = b"\x00" + struct.pack(">I", len(body)) + body
            out += _frame(DATA, END_STREAM, stream_id, message)
        self.sock.sendall(out)
        while not all(s.ended for s in streams.values()):
            self._read_frame(streams)
        return [_reply(s) for s in streams.values()]

    def _headers(self, path: str) -> bytes:
        left = max(1, int((self.deadline - time.monotonic()) * 1000))
        return hpack_lite.encode(
            [
                (":method", "POST"),
                (":scheme", self.scheme),
                (":path", path),
                (":authority", self.authority),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                ("grpc-timeout", f"{left}m"),
                ("user-agent", "dockyard-cli-fast"),
            ]
        )

    def _read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65_536, count - len(self.buffer)))
            if not chunk:
                raise ProtocolError("the server closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def _read_frame(self, streams: dict[int, _Stream]) -> None:
        head = self._read_exactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream_id = int.from_bytes(head[5:9], "big") & MAX_WINDOW
        payload = self._read_exactly(length)
        if kind == SETTINGS:
            if not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
        elif kind == PING:
            if not flags & ACK:
                self.sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind in (GOAWAY, RST_STREAM, PUSH_PROMISE):
            raise ProtocolError(f"frame type {kind} from the server")
        elif stream_id in streams:
            self._stream_frame(streams[stream_id], kind, flags, payload)
        elif stream_id != 0 or kind not in (0x8, 0x2):  # window updates, priority: ignored
            raise ProtocolError(f"frame type {kind} on unknown stream {stream_id}")

    def _stream_frame(self, stream: _Stream, kind: int, flags: int, payload: bytes) -> None:
        if kind == DATA:
            stream.data += _unpad(flags, payload)
            if len(stream.data) > MAX_RESPONSE_BYTES + 5:
                raise ProtocolError("answer too large")
        elif kind in (HEADERS, CONTINUATION):
            block = payload if kind == CONTINUATION else _unpad(flags, payload)
            if kind == HEADERS and flags & PRIORITY:
                block = block[5:]
            stream.pending += block
            if len(stream.pending) > MAX_HEADER_BYTES:
                raise ProtocolError("header block too large")
            if flags & END_HEADERS:
                try:
                    stream.blocks.append(self.decoder.decode(bytes(stream.pending)))
                except hpack_lite.HpackError as exc:
                    raise ProtocolError(f"header block: {exc}") from exc
                stream.pending.clear()
        elif kind not in (0x8, 0x2):
            raise ProtocolError(f"frame type {kind} on a stream")
        if kind in (DATA, HEADERS) and flags & END_STREAM:
            stream.ended = True


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    pad = payload[0]
    return payload[1 : len(payload) - pad]


def _reply(stream: _Stream) -> Reply:
    """The gRPC status (trailers, or the headers of a trailers-only answer) and message."""
    if not stream.blocks or dict(stream.blocks[0]).get(":status") != "200":
        raise ProtocolError(f"{stream.path}: not a gRPC answer")
    metadata = [kv for block in stream.blocks for kv in block if not kv[0].startswith(":")]
    values = dict(metadata)
    if "grpc-status" not in values:
        raise ProtocolError(f"{stream.path}: no grpc-status")
    status = int(values["grpc-status"])
    if status != OK:
        from urllib.parse import unquote

        return Reply(status, unquote(values.get("grpc-message", "")), b"", metadata)
    data = bytes(stream.data)
    if len(data) < 5 or data[0] != 0:
        raise ProtocolError(f"{stream.path}: not one uncompressed message")
    size = int.from_bytes(data[1:5], "big")
    if len(data) != 5 + size:
        raise ProtocolError(f"{stream.path}: not one whole message")
    return Reply(OK, "", data[5:], metadata)
