"""Docker's multiplexed stream format (``application/vnd.docker.multiplexed-stream``).

Logs of a container without a TTY, and attach/exec output, are frames: an 8-byte
header (the stream: 0 stdin, 1 stdout, 2 stderr, 3 Docker's systemerr; three zero
bytes; the payload's length as a big-endian uint32) and the payload. A TTY container's
output is the raw bytes instead.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

__all__ = [
    "MULTIPLEXED",
    "RAW_STREAM",
    "STDERR",
    "STDIN",
    "STDOUT",
    "SYSTEMERR",
    "frame",
    "stream_id",
]

STDIN: Final = 0
STDOUT: Final = 1
STDERR: Final = 2
SYSTEMERR: Final = 3
MULTIPLEXED: Final = "application/vnd.docker.multiplexed-stream"
RAW_STREAM: Final = "application/vnd.docker.raw-stream"
MAX_FRAME: Final = 0xFFFFFFFF
_HEADER = struct.Struct(">BxxxI")


def stream_id(name: Literal["stdin", "stdout", "stderr"]) -> int:
    """The header's stream byte for a stream's name."""
    return {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR}[name]


def frame(stream: int, data: bytes) -> bytes:
    """One frame: the header and `data` (split larger payloads before; none is 4 GiB)."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"a frame holds at most {MAX_FRAME} bytes, got {len(data)}")
    return _HEADER.pack(stream, len(data)) + data
