"""Read conmon's k8s-file container log, and its rotated files, with bounded memory.

Each line is ``<RFC3339Nano> <stdout|stderr> <F|P> <content>``; ``P`` marks a partial
line continued by the next entry of the same stream, ``F`` ends it. conmon writes a
long line as ``P`` entries of at most 8 KiB; the parser joins them up to
``MAX_LINE_BYTES`` and hands a longer line on in pieces of that size (their bytes, put
together, are the line), so a container printing a gigabyte without a newline never
makes the agent hold it.

The log is ``ctr.log`` and, once rotated (see ``logrotate``), ``ctr.log.1`` (newer)
to ``ctr.log.N`` (older). A read opens the files once and reads through those open
descriptors, so a rotation meanwhile neither loses nor repeats a line; ``tail`` reads
from the end, in growing steps, only as much as its last N lines need.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from dockyard.agent.runtime.base import LogRecord, Stream

__all__ = ["MAX_LINE_BYTES", "LogParser", "log_files", "parse_timestamp", "read_log"]

MAX_LINE_BYTES = 64 * 1024
"""The longest line the parser joins; a longer one comes in pieces of this size."""
_READ_BYTES = 1 << 20
_TAIL_STEP = 64 * 1024
MAX_ROTATED = 100
"""Rotated files looked for beside the live one (``ctr.log.1`` .. ``ctr.log.100``)."""


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
    """Turns k8s-file lines into whole :class:`LogRecord` lines, joining partials up to
    ``MAX_LINE_BYTES`` per stream."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        """Start with no partial line pending."""
        self._pending: dict[Stream, tuple[datetime, bytes]] = {}
        self._max_line = max_line

    def feed(self, line: bytes) -> LogRecord | None:
        """One log-file line (without newline); a record when a line completes, or when
        a partial line reached the join limit (that piece, without a newline)."""
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
            return None
        stream: Stream = "stdout" if parts[1] == b"stdout" else "stderr"
        content = parts[3] if len(parts) == 4 else b""
        try:
            ts = parse_timestamp(parts[0].decode())
        except (ValueError, UnicodeDecodeError):
            return None
        first_ts, buf = self._pending.pop(stream, (ts, b""))
        if parts[2] == b"P":
            buf += content
            if len(buf) >= self._max_line:
                return LogRecord(stream, first_ts, buf)
            self._pending[stream] = (first_ts, buf)
            return None
        return LogRecord(stream, first_ts, buf + content + b"\n")

    def flush(self) -> list[LogRecord]:
        """Partial lines left at the end of the log (output without a final newline)."""
        out = [LogRecord(stream, ts, buf) for stream, (ts, buf) in self._pending.items()]
        self._pending.clear()
        return sorted(out, key=lambda r: r.timestamp or datetime.min)


def log_files(path: Path) -> list[Path]:
    """The rotated files of a log that exist, oldest first (``ctr.log.N`` .. ``.1``)."""
    found = [path.with_name(f"{path.name}.{i}") for i in range(1, MAX_ROTATED + 1)]
    return [p for p in reversed(found) if p.exists()]


class _Files:
    """A log's files as they are when it is opened, read in order through open
    descriptors; the live file is followed across a rotation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[BinaryIO] = []
        for name in [*log_files(path), path]:
            try:
                self.files.append(name.open("rb"))
            except FileNotFoundError:
                continue
        self.index = 0

    def close(self) -> None:
        for f in self.files:
            f.close()

    def sizes(self) -> list[int]:
        return [os.fstat(f.fileno()).st_size for f in self.files]

    def seek(self, index: int, offset: int) -> None:
        """Read from `offset` of file `index` on (the files before it are skipped)."""
        self.index = index
        if index < len(self.files):
            self.files[index].seek(offset)
        for f in self.files[index + 1 :]:
            f.seek(0)

    def read(self) -> bytes:
        """Up to 1 MiB of complete lines from where reading stands; b"" at the end of the
        files (the live one may grow later)."""
        while self.index < len(self.files):
            f = self.files[self.index]
            live = self.index == len(self.files) - 1
            start = f.tell()
            data = f.read(_READ_BYTES)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == _READ_BYTES:
                end = len(data)  # no newline in a whole chunk: not conmon's; skip it
            f.seek(start + end)
            if end:
                return data[:end]
            if live:
                return b""
            self.index += 1  # a rotated file is done (an unfinished last line is dropped)
        return b""

    def read_on(self, follow: bool) -> bytes:
        """``read``; at the end of the live file, when following, a rotation is followed
        and the new file read in the same call (one thread hop for both)."""
        data = self.read()
        if not data and follow and self.follow_rotation():
            return self.read()
        return data

    def follow_rotation(self) -> bool:
        """At the end of the live file: when the log's path is another file now (it was
        rotated, or truncated by conmon's size limit), go on in that one from its start."""
        try:
            now = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False  # between the rename and conmon's reopen
        if self.files and os.fstat(self.files[-1].fileno()).st_ino == now:
            return False
        try:
            new = self.path.open("rb")
        except FileNotFoundError:
            return False
        self.close()
        self.files, self.index = [new], 0
        return True


def _records(files: _Files, parser: LogParser) -> Iterable[LogRecord]:
    """Every record from where `files` stand to their end."""
    while data := files.read():
        for line in data.splitlines():
            record = parser.feed(line)
            if record is not None:
                yield record


def _line_start(files: _Files, sizes: list[int], back: int) -> tuple[int, int]:
    """The first line that starts at or after `back` bytes before the end of the files,
    as (file index, offset)."""
    position = sum(sizes) - back
    index = 0
    while index < len(sizes) - 1 and position >= sizes[index]:
        position -= sizes[index]
        index += 1
    if position <= 0:
        return index, 0
    f = files.files[index]
    f.seek(position - 1)
    while chunk := f.read(_TAIL_STEP):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return index, position + newline
        position += len(chunk)
    return index + 1, 0


def _tail(files: _Files, count: int, final: bool) -> tuple[list[LogRecord], LogParser]:
    """The last `count` records (with the partial lines at the end when `final`), and the
    parser to go on with; `files` are left at their end."""
    sizes = files.sizes()
    total = sum(sizes)
    back = _TAIL_STEP
    while True:
        from_start = back >= total
        index, offset = _line_start(files, sizes, back) if not from_start else (0, 0)
        files.seek(index, offset)
        parser = LogParser()
        kept: deque[tuple[LogRecord, bool]] = deque(maxlen=count)
        ended: set[Stream] = set()
        for record in _records(files, parser):
            _keep(kept, ended, record, from_start)
        flushed = parser.flush() if final else []
        for record in flushed:
            _keep(kept, ended, record, from_start)
        whole = len(kept) == count and all(whole for _, whole in kept)
        if from_start or (whole and not final):
            return [record for record, _ in kept], parser
        if whole:
            # A stream with no entry here may still end in a partial line further back,
            # which a whole read shows last: look for its last entry.
            start = sum(sizes[:index]) + offset
            here = {r.stream for r, _ in kept} | ended | {r.stream for r in flushed}
            needed = _partial_before(files, sizes, start, [s for s in STREAMS if s not in here])
            if needed is None:
                files.seek(len(files.files) - 1, files.sizes()[-1] if files.files else 0)
                return [record for record, _ in kept], parser
            back = max(back, total - needed)
        back *= 4


STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


def _partial_before(files: _Files, sizes: list[int], end: int, streams: list[Stream]) -> int | None:
    """Where the last entry of one of `streams` before `end` is, when that entry is a
    partial one (P); None when each of them ends with a whole line or has no entry.

    Blocks are searched from the end for the stream's field (a byte search: a log with
    no entry of the stream is scanned quickly); a block's first, unfinished line goes
    with the next block."""
    wanted = {f" {stream} ".encode() for stream in streams}
    carry = b""
    position = end
    while wanted and position > 0:
        start = max(0, position - _TAIL_STEP)
        block = _read_span(files, sizes, start, position - start) + carry
        first = block.find(b"\n") + 1 if start > 0 else 0
        carry = block[: max(first - 1, 0)] if len(block) <= _READ_BYTES else b""
        for token in sorted(wanted):
            found = _last_field(block, first, token)
            if found is None:
                continue
            if block[found + len(token) : found + len(token) + 1] == b"P":
                return start + block.rfind(b"\n", 0, found) + 1
            wanted.discard(token)
        position = start
    return None


def _last_field(block: bytes, low: int, token: bytes) -> int | None:
    """Where `token` last stands as a line's stream field (right after the timestamp)
    in `block`, at or after `low`."""
    high = len(block)
    while (found := block.rfind(token, low, high)) >= 0:
        line = block.rfind(b"\n", 0, found) + 1
        if line >= low and b" " not in block[line:found]:
            return found
        high = found
    return None


def _read_span(files: _Files, sizes: list[int], start: int, length: int) -> bytes:
    """`length` bytes from virtual offset `start` of the files taken end to end."""
    out = bytearray()
    index = 0
    while index < len(sizes) and start >= sizes[index]:
        start -= sizes[index]
        index += 1
    while length > 0 and index < len(sizes):
        f = files.files[index]
        f.seek(start)
        data = f.read(min(length, sizes[index] - start))
        out += data
        length -= len(data)
        index, start = index + 1, 0
    return bytes(out)


def _keep(
    kept: deque[tuple[LogRecord, bool]], ended: set[Stream], record: LogRecord, from_start: bool
) -> None:
    """Keep `record`, marked whole when its stream ended a line since the read began (an
    earlier one may have begun before it, or be cut in other pieces than from the start)."""
    kept.append((record, from_start or record.stream in ended))
    if record.data.endswith(b"\n"):
        ended.add(record.stream)


def _present(record: LogRecord, since: datetime | None, timestamps: bool) -> LogRecord | None:
    if since is not None and record.timestamp is not None and record.timestamp < since:
        return None
    return record if timestamps else record._replace(timestamp=None)


async def _pause(poll: float, exited: asyncio.Event | None) -> None:
    """`poll` seconds, or until `exited` is set (one already set: the full poll)."""
    if exited is None or exited.is_set():
        await asyncio.sleep(poll)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(exited.wait(), poll)


async def read_log(
    path: Path,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: datetime | None = None,
    timestamps: bool = False,
    finished: Callable[[], Awaitable[bool]] | None = None,
    poll: float = 0.1,
    exited: asyncio.Event | None = None,
) -> AsyncIterator[LogRecord]:
    """Yield the log's lines; with ``follow`` keep polling until ``finished()`` is true.

    ``exited``, set when the container exits, ends a poll's wait early, so that a
    follower (`run --rm`, `Containers.Run`) ends with the container, not up to
    ``poll`` later.

    ``tail`` keeps the last N lines of what is already written; ``since`` drops lines
    older than it; the timestamp is only filled in with ``timestamps``.
    """
    files = await asyncio.to_thread(_Files, path)
    try:
        parser = LogParser()
        if tail is not None and tail >= 0:
            last, parser = await asyncio.to_thread(_tail, files, max(tail, 1), not follow)
            for record in last if tail > 0 else []:
                shown = _present(record, since, timestamps)
                if shown is not None:
                    yield shown
        while True:
            done = not follow or finished is None or await finished()
            while data := await asyncio.to_thread(files.read_on, follow):
                for line in data.splitlines():
                    fed = parser.feed(line)
                    shown = _present(fed, since, timestamps) if fed is not None else None
                    if shown is not None:
                        yield shown
            if done:
                break
            await _pause(poll, exited)
        if tail != 0:
            for record in parser.flush():
                shown = _present(record, since, timestamps)
                if shown is not None:
                    yield shown
    finally:
        # Read-only descriptors of local files: their close writes nothing back, so it
        # is done here rather than in a thread hop on `run --rm`'s path to its exit.
        files.close()
