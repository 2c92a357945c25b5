"""The build cache: a step that ran before on the same parent, with the same instruction,
build arguments and (COPY/ADD) the same file content, is not run again.

Keys chain as the steps do: a stage starts from its base image's id (or ``scratch``),
and each instruction folds its text, the build arguments in scope and, for COPY and
ADD, a digest of the sources (names, modes, link targets, bytes, the xattrs COPY
carries; each length-framed) into the key of the next step, so timestamps in the
configs never break the chain. A hit gives back the image config and layers the step
made then, used only while all its layer blobs are still in the store. Entries live
in ``<state dir>/build-cache.json`` (written atomically, at most :data:`MAX_ENTRIES`,
the oldest dropped first); the file is a cache, so one build's entries may overwrite a
concurrent one's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.build.context import Source, opened
from dockyard.agent.build.image import ImageDraft
from dockyard.agent.build.xattrs import pax_xattrs
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.content import parse_json, write_json_atomic
from dockyard.agent.images.models import Layer

__all__ = ["MAX_ENTRIES", "BuildCache", "chain", "sources_digest"]

log = structlog.get_logger(__name__)

MAX_ENTRIES = 512
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _framed(data: bytes) -> bytes:
    """``data`` with its length first: a sequence of them reads back one way only."""
    return len(data).to_bytes(8, "big") + data


def chain(parent: str, *parts: str) -> str:
    """The next key: ``parent`` with ``parts`` folded in (each length-prefixed)."""
    digest = hashlib.sha256(_framed(parent.encode()))
    for part in parts:
        digest.update(_framed(part.encode()))
    return digest.hexdigest()


def _hash_xattrs(digest: Any, fd: int) -> None:
    """The xattrs COPY carries (``xattrs.py``), when there are any: keys of sources
    without them are what they were before xattrs were carried."""
    records = pax_xattrs(fd)
    if records:  # a leading NUL: no entry's name frame starts so
        text = "".join(f"\0{k}\0{v}" for k, v in sorted(records.items()))
        digest.update(_framed(text.encode("utf-8", "surrogateescape")))


def _hash_entry(digest: Any, parent: int, name: str, arcname: str) -> None:
    found = os.lstat(name, dir_fd=parent)
    digest.update(_framed(f"{arcname}\0{found.st_mode:o}".encode()))
    if stat.S_ISDIR(found.st_mode):
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            _hash_xattrs(digest, fd)
            for child in sorted(os.listdir(fd)):
                _hash_entry(digest, fd, child, f"{arcname}/{child}")
        finally:
            os.close(fd)
    elif stat.S_ISLNK(found.st_mode):
        digest.update(_framed(os.readlink(name, dir_fd=parent).encode()))
    elif stat.S_ISREG(found.st_mode):  # the content's own digest: a fixed length
        content = hashlib.sha256()
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 20):
                content.update(chunk)
            digest.update(content.digest())
            _hash_xattrs(digest, fd)


def sources_digest(root: Path, sources: Sequence[Source]) -> str:
    """A digest of COPY's sources as they are (blocking)."""
    digest = hashlib.sha256()
    for source in sources:
        with opened(root, source.parts) as (parent, name):
            _hash_entry(digest, parent, name, "/".join(source.parts) or ".")
    return digest.hexdigest()


class BuildCache:
    """Step results by key, kept in one JSON file (blocking methods: use threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Any] = {}
        self.changed = False

    def load(self) -> None:
        """Read the file (a missing or corrupt one is an empty cache)."""
        try:
            raw = parse_json(self.path.read_bytes(), str(self.path))
            self.entries = dict(raw.get("entries", {}))
        except FileNotFoundError:
            self.entries = {}
        except Exception as exc:
            log.warning("build.cache_unreadable", path=str(self.path), error=str(exc))
            self.entries = {}

    def get(self, key: str, blobs: BlobStore) -> ImageDraft | None:
        """The draft a step left, if its layers are all still stored."""
        entry = self.entries.get(key)
        if not isinstance(entry, Mapping):
            return None
        try:
            layers = [Layer(**layer) for layer in entry["layers"]]
            config = dict(entry["config"])
        except (KeyError, TypeError, ValueError):
            return None
        if not all(blobs.has(layer.digest) for layer in layers):
            return None
        return ImageDraft(config, layers).copy()

    def put(self, key: str, draft: ImageDraft) -> None:
        """Remember a step's result."""
        self.entries.pop(key, None)
        self.entries[key] = {
            "config": draft.copy().config,
            "layers": [asdict(layer) for layer in draft.layers],
        }
        while len(self.entries) > MAX_ENTRIES:
            self.entries.pop(next(iter(self.entries)))
        self.changed = True

    def save(self) -> None:
        """Write the file if anything was added."""
        if self.changed:
            write_json_atomic(self.path, {"entries": self.entries})
            self.changed = False
