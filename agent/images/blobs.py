"""Content-addressed blob storage: `blobs/sha256/<hex>`, written atomically.

Content goes to a temporary file on the same filesystem, is hashed while it
streams, fsync'd, and only renamed into place when its digest is the one that was
announced. A failed, partial or mismatching write leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import structlog

from dockyard.agent.images.errors import DigestMismatch, ImageStoreError, SizeMismatch
from dockyard.common.distribution.media import digest_hex

__all__ = ["BlobSink", "BlobStore", "BlobWriter", "SizeBound"]

log = structlog.get_logger(__name__)

_FLUSH_BYTES = 1 << 20
_READ_BYTES = 1 << 20


def store_error(exc: OSError, what: str) -> ImageStoreError:
    """Turn an OSError into an ImageStoreError that names `what` and the cause."""
    if exc.errno == errno.ENOSPC:
        return ImageStoreError(f"cannot store {what}: no space left on device")
    return ImageStoreError(f"cannot store {what}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under `<root>/blobs/sha256/`, temporary files under `<root>/tmp/`."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob `digest` lives (whether or not it exists)."""
        return self.dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """Size in bytes of a stored blob."""
        return self.path(digest).stat().st_size

    def digests(self) -> set[str]:
        """Every stored blob digest."""
        return {"sha256:" + p.name for p in self.dir.iterdir() if len(p.name) == 64}

    def read_bytes(self, digest: str) -> bytes:
        """A small blob's content (manifests, configs); blocking."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageStoreError(f"blob {digest} is missing from the store") from None

    async def read(self, digest: str) -> bytes:
        """A small blob's content, read off the event loop."""
        return await asyncio.to_thread(self.read_bytes, digest)

    def delete(self, digest: str) -> None:
        """Remove a blob if present."""
        self.path(digest).unlink(missing_ok=True)

    def writer(
        self,
        expected: str | None = None,
        what: str | None = None,
        *,
        size: int | None = None,
        limit: int | None = None,
    ) -> BlobWriter:
        """An async writer that commits a blob on a clean exit, discards it otherwise.

        `size` is the size the blob was declared with (a manifest's descriptor): a byte
        more is refused as it arrives, and so is a blob that ends short of it. `limit`
        caps a blob whose size nobody declared (a manifest asked for by tag).
        """
        return BlobWriter(
            self, expected, what or f"blob {expected or '(new)'}", SizeBound(size, limit)
        )

    async def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        """Store `data`, verified against `expected` if given, and return its digest."""
        async with self.writer(expected) as writer:
            await writer.write(data)
        return writer.digest

    def sink(self, expected: str | None = None, what: str = "blob") -> BlobSink:
        """A blocking writer (for threads): `write()`, then `commit()` or `discard()`."""
        return BlobSink(self, expected, what)

    def ingest(self, reader: BinaryIO, expected: str | None = None, what: str | None = None) -> str:
        """Store what `reader` yields (blocking; call it in a thread). Returns the digest."""
        sink = BlobSink(self, expected, what or f"blob {expected or '(new)'}")
        try:
            while chunk := reader.read(_READ_BYTES):
                sink.write(chunk)
            return sink.commit()
        except BaseException:
            sink.discard()
            raise


class BlobSink:
    """A blocking blob write: temp file, running hash, then `commit()` or `discard()`."""

    def __init__(self, store: BlobStore, expected: str | None, what: str) -> None:
        self.store = store
        self.expected = expected
        self.what = what
        self.hash = hashlib.sha256()
        self.written = 0
        try:
            fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="ingest-")
        except OSError as exc:
            raise store_error(exc, what) from exc
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes, /) -> int:
        """Append data (hashed as it goes)."""
        self.hash.update(data)
        self.written += len(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise store_error(exc, self.what) from exc
        return len(data)

    def flush(self) -> None:
        """Nothing to do: `commit()` flushes and fsyncs (file-like API for gzip)."""

    def commit(self) -> str:
        """Verify, fsync and rename into place; returns the digest."""
        digest = "sha256:" + self.hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            raise DigestMismatch(
                f"{self.what}: digest mismatch, expected {self.expected}, got {digest} "
                f"({self.written} bytes); discarded"
            )
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.path, self.store.path(digest))
            fsync_dir(self.store.dir)
        except OSError as exc:
            raise store_error(exc, self.what) from exc
        return digest

    def discard(self) -> None:
        """Drop the temporary file."""
        with contextlib.suppress(OSError):  # closing flushes: a full disk fails here too
            self.file.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SizeBound:
    """The size a blob was declared with and the most bytes it may have (None: any)."""

    declared: int | None = None
    limit: int | None = None

    def check(self, received: int, what: str) -> None:
        """Raise SizeMismatch when `received` bytes are already more than allowed."""
        if self.declared is not None and received > self.declared:
            raise SizeMismatch(
                f"{what}: more bytes than the {self.declared} declared (at least {received} "
                f"received); cut off and refused"
            )
        if self.limit is not None and received > self.limit:
            raise SizeMismatch(
                f"{what}: larger than the limit of {self.limit} bytes (at least {received} "
                f"received); cut off and refused"
            )

    def check_complete(self, received: int, what: str) -> None:
        """Raise SizeMismatch when a finished blob is shorter than declared."""
        self.check(received, what)
        if self.declared is not None and received != self.declared:
            raise SizeMismatch(
                f"{what}: {received} bytes received, {self.declared} declared; refused"
            )


class BlobWriter:
    """Async, streaming, verified blob write; use as `async with store.writer(d) as w`.

    Leaving the block normally commits the blob (verifying the digest); leaving it
    with an exception, or a failed verification, deletes the temporary file.
    """

    def __init__(
        self, store: BlobStore, expected: str | None, what: str, bound: SizeBound | None = None
    ) -> None:
        self._store = store
        self._expected = expected
        self._what = what
        self._bound = bound or SizeBound()
        self._sink: BlobSink | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.digest = ""

    @property
    def written(self) -> int:
        """Bytes received so far."""
        return (self._sink.written if self._sink else 0) + self._buffered

    async def __aenter__(self) -> BlobWriter:
        self._sink = await asyncio.to_thread(BlobSink, self._store, self._expected, self._what)
        return self

    async def write(self, data: bytes) -> None:
        """Append data; it is flushed to disk in ~1 MiB batches off the event loop.

        Raises:
            SizeMismatch: the blob grew past its declared size or its limit.
        """
        self._bound.check(self.written + len(data), self._what)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        assert self._sink is not None
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        await asyncio.to_thread(self._sink.write, data)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sink = self._sink
        assert sink is not None
        if exc_type is not None:
            sink.discard()  # quick, and must not be skipped by a second cancellation
            return
        try:
            await self._flush()
            self._bound.check_complete(sink.written, self._what)
            self.digest = await asyncio.to_thread(sink.commit)
        except BaseException:
            sink.discard()
            raise
        log.debug("blob.stored", digest=self.digest, size=sink.written)
