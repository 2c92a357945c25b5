"""Read conmon's k8s-file container log.

Each line is ``<RFC3339Nano> <stdout|stderr> <F|P> <content>``; ``P`` marks a partial
line continued by the next entry of the same stream, ``F`` ends it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

from dockyard.agent.runtime.base import LogRecord, Stream

__all__ = ["LogParser", "parse_timestamp", "read_log"]


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with up to nanoseconds (kept to microseconds)."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        text = f"{head}.{rest[:i][:6].ljust(6, '0')}{rest[i:]}"
    return datetime.fromisoformat(text)


class LogParser:
    """Turns k8s-file lines into whole :class:`LogRecord` lines, joining partials."""

    def __init__(self) -> None:
        """Start with no partial line pending."""
        self._pending: dict[Stream, tuple[datetime, bytes]] = {}

    def feed(self, line: bytes) -> LogRecord | None:
        """One log-file line (without newline); a record when a line completes."""
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
            return None
        stream: Stream = "stdout" if parts[1] == b"stdout" else "stderr"
        content = parts[3] if len(parts) == 4 else b""
        try:
            ts = parse_timestamp(parts[0].decode())
        except ValueError:
            return None
        first_ts, buf = self._pending.pop(stream, (ts, b""))
        if parts[2] == b"P":
            self._pending[stream] = (first_ts, buf + content)
            return None
        return LogRecord(stream, first_ts, buf + content + b"\n")

    def flush(self) -> list[LogRecord]:
        """Partial lines left at the end of the log (output without a final newline)."""
        out = [LogRecord(stream, ts, buf) for stream, (ts, buf) in self._pending.items()]
        self._pending.clear()
        return sorted(out, key=lambda r: r.timestamp or datetime.min)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """Complete lines from ``offset`` on, and the offset after them."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", offset
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


def _present(record: LogRecord, since: datetime | None, timestamps: bool) -> LogRecord | None:
    if since is not None and record.timestamp is not None and record.timestamp < since:
        return None
    return record if timestamps else record._replace(timestamp=None)


async def read_log(
    path: Path,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: datetime | None = None,
    timestamps: bool = False,
    finished: Callable[[], Awaitable[bool]] | None = None,
    poll: float = 0.1,
) -> AsyncIterator[LogRecord]:
    """Yield the log's lines; with ``follow`` keep polling until ``finished()`` is true.

    ``tail`` keeps the last N lines of what is already written; ``since`` drops lines
    older than it; the timestamp is only filled in with ``timestamps``.
    """
    parser = LogParser()
    data, offset = await asyncio.to_thread(_read_from, path, 0)
    records: deque[LogRecord] | list[LogRecord]
    records = deque(maxlen=tail) if tail is not None and tail >= 0 else []
    for line in data.splitlines():
        record = parser.feed(line)
        if record is not None:
            records.append(record)
    if not follow:
        records.extend(parser.flush())
    if tail == 0:
        records.clear()
    for record in records:
        shown = _present(record, since, timestamps)
        if shown is not None:
            yield shown
    while follow:
        done = finished is None or await finished()
        data, offset = await asyncio.to_thread(_read_from, path, offset)
        for line in data.splitlines():
            record = parser.feed(line)
            shown = _present(record, since, timestamps) if record is not None else None
            if shown is not None:
                yield shown
        if done:
            break
        if not data:
            await asyncio.sleep(poll)
    if tail != 0:
        for record in parser.flush():
            shown = _present(record, since, timestamps)
            if shown is not None:
                yield shown
