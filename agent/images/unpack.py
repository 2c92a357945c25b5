"""Unpack a layer tarball into a snapshot directory, safely and the overlayfs way.

OCI whiteouts become what overlayfs reads: `.wh.NAME` is a 0/0 character device
named NAME and `.wh..wh..opq` is the `trusted.overlay.opaque=y` xattr on its
directory. Paths that would leave the snapshot (`..`, absolute names, writing
through a symlink, hard links to outside) are refused with `LayerError`.
Everything here blocks: callers run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import structlog

from dockyard.agent.images.errors import LayerError

__all__ = ["OPAQUE_XATTR", "layer_diff_id", "open_layer", "unpack_layer"]

log = structlog.get_logger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _HashingReader:
    """Reads through to a stream while hashing every byte (the diff id)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.hash.hexdigest()


@contextlib.contextmanager
def open_layer(path: Path) -> Iterator[BinaryIO]:
    """Open a layer blob as an uncompressed tar stream (gzip, zstd or plain)."""
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield cast(BinaryIO, stream)
        elif magic == _ZSTD_MAGIC:
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(raw) as zstream:
                yield cast(BinaryIO, zstream)
        else:
            yield raw


def layer_diff_id(path: Path) -> str:
    """The diff id (sha256 of the uncompressed tar) of a layer blob."""
    with open_layer(path) as stream:
        return _HashingReader(stream).drain()


def unpack_layer(blob: Path, dest: Path) -> str:
    """Unpack the layer `blob` into the empty directory `dest`.

    Returns:
        The layer's diff id, hashed while it was unpacked.

    Raises:
        LayerError: the tarball is malformed or tries to escape `dest`.
    """
    with open_layer(blob) as stream:
        reader = _HashingReader(stream)
        try:
            with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
                _Unpacker(tar, dest).run()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise LayerError(f"cannot unpack layer {blob.name}: {exc}") from exc
        return reader.drain()


@dataclass(slots=True)
class _DirAttrs:
    path: Path
    mode: int
    mtime: float


class _Unpacker:
    def __init__(self, tar: tarfile.TarFile, dest: Path) -> None:
        self.tar = tar
        self.dest = dest
        self.safe_dirs: set[Path] = {dest}
        self.dirs: list[_DirAttrs] = []

    def run(self) -> None:
        for member in self.tar:
            self.entry(member)
        for attrs in sorted(self.dirs, key=lambda d: len(d.path.parts), reverse=True):
            os.chmod(attrs.path, attrs.mode)
            os.utime(attrs.path, (attrs.mtime, attrs.mtime))

    def relpath(self, name: str) -> str:
        if name.startswith("/"):
            raise LayerError(f"layer entry {name!r} has an absolute path")
        clean = posixpath.normpath(name)
        if clean == ".." or clean.startswith("../"):
            raise LayerError(f"layer entry {name!r} escapes the layer root")
        return "" if clean == "." else clean

    def parent_dir(self, rel: str, create: bool) -> Path:
        """The checked parent directory of `rel`: no component may be a symlink."""
        current = self.dest
        for part in Path(rel).parent.parts:
            current = current / part
            if current in self.safe_dirs:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                if not create:
                    raise LayerError(f"layer entry {rel!r}: {current} does not exist") from None
                os.mkdir(current, 0o755)
                self.safe_dirs.add(current)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"layer entry {rel!r} would be written through a symlink")
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"layer entry {rel!r}: a parent is not a directory")
            self.safe_dirs.add(current)
        return current

    def entry(self, member: tarfile.TarInfo) -> None:
        rel = self.relpath(member.name)
        if not rel:
            self.dirs.append(_DirAttrs(self.dest, member.mode & 0o7777, member.mtime))
            return
        parent = self.parent_dir(rel, create=True)
        base = posixpath.basename(rel)
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX):
            target = parent / base[len(WHITEOUT_PREFIX):]
            self.clear(target, keep_dir=False)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            return
        target = parent / base
        self.clear(target, keep_dir=member.isdir())
        self.create(member, target, rel)
        if member.isdir():
            self.dirs.append(_DirAttrs(target, member.mode & 0o7777, member.mtime))
            self.safe_dirs.add(target)

    def clear(self, target: Path, keep_dir: bool) -> None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(target)
            self.safe_dirs = {d for d in self.safe_dirs if not d.is_relative_to(target)}
        else:
            target.unlink()

    def create(self, member: tarfile.TarInfo, target: Path, rel: str) -> None:
        if member.isdir():
            if not target.exists():
                os.mkdir(target, 0o700)
        elif member.isreg():
            self.write_file(member, target)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(self.link_source(member, rel), target, follow_symlinks=False)
            return  # a hard link shares the inode: its metadata is the source's
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(target, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(target)
        else:
            log.warning("skipping unsupported layer entry", name=rel, type=member.type)
            return
        self.set_metadata(member, target)

    def write_file(self, member: tarfile.TarInfo, target: Path) -> None:
        source = self.tar.extractfile(member)
        if source is None:
            raise LayerError(f"layer entry {member.name!r} has no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)

    def link_source(self, member: tarfile.TarInfo, rel: str) -> Path:
        link = self.relpath(member.linkname.lstrip("/"))
        if not link:
            raise LayerError(f"hard link {rel!r} points at the layer root")
        source = self.parent_dir(link, create=False) / posixpath.basename(link)
        if not os.path.lexists(source):
            raise LayerError(f"hard link {rel!r} points at {link!r}, not in this layer")
        return source

    def set_metadata(self, member: tarfile.TarInfo, target: Path) -> None:
        os.lchown(target, member.uid, member.gid)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr."):]
                try:
                    os.setxattr(target, name, value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
                except OSError as exc:
                    log.debug("xattr not kept", path=str(target), xattr=name, error=str(exc))
        if member.issym():
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
            return
        if not member.isdir():
            os.chmod(target, member.mode & 0o7777)
            os.utime(target, (member.mtime, member.mtime))
