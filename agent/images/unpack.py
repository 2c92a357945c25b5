"""Unpack a layer tarball into a snapshot directory, safely and the overlayfs way.

OCI whiteouts become what overlayfs reads: `.wh.NAME` is a 0/0 character device
named NAME and `.wh..wh..opq` is the `trusted.overlay.opaque=y` xattr on its
directory. Nothing outside the snapshot directory is ever created, changed or
removed, whatever the entries and their order:

- every name is checked (`safe_fs.split_name`: no `..`, absolute, NUL, over-long or
  over-deep names) and every operation is relative to a directory fd, resolved with
  openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) or an O_NOFOLLOW walk, never
  following a symlink (`safe_fs.Beneath`);
- files are created fresh (O_EXCL after removing what was there) and their metadata
  is set on the open fd; a directory's mode and mtime, applied after all entries, go
  to the directory that was created (same inode) or nowhere;
- the entries are written by a thread chrooted into the snapshot with only the
  capabilities a layer needs (`confine.run_confined`); the opaque xattrs (trusted.*,
  which needs CAP_SYS_ADMIN) are set after it, through the same resolver.

Everything here blocks: callers run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

import structlog
import zstandard
from zstandard import ZstdError

from dockyard.agent.images.confine import Confinement, run_confined
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.safe_fs import Beneath, UnsafePath, split_name
from dockyard.agent.images.unpack_limits import Budget, UnpackLimits

__all__ = [
    "MAX_HEADER_BYTES",
    "OPAQUE_XATTR",
    "BoundedTarInfo",
    "layer_diff_id",
    "open_layer",
    "unpack_layer",
]

log = structlog.get_logger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_KEPT_XATTRS = ("user.", "security.capability", "system.posix_acl_")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_HEADER_BYTES = 1 << 20  # a PAX or GNU long-name header (Go's archive/tar: the same)
_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _HashingReader:
    """Reads through to a stream while hashing every byte (the diff id), and spending
    them from ``budget`` when one is given (named ``layer`` in its refusal)."""

    def __init__(self, raw: IO[bytes], budget: Budget | None = None, layer: str = "") -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.budget = budget
        self.layer = layer

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > 1 << 20:
            size = 1 << 20  # never one unbounded read of a stream that may be a bomb
        data = self.raw.read(size)
        if self.budget is not None:
            self.budget.spend_bytes(len(data), self.layer)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.hash.hexdigest()


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose PAX and GNU long-name records are read only up to 1 MiB.

    tarfile reads such a record whole into memory: without a bound, one header
    claiming gigabytes takes the agent's memory. Pass as `tarfile.open(tarinfo=...)`.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise LayerError(
                f"a tar header record of {self.size} bytes for {self.name!r} "
                f"is over the {MAX_HEADER_BYTES}-byte limit"
            )
        result: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return result


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
            with zstandard.ZstdDecompressor().stream_reader(raw) as zstream:
                yield cast(BinaryIO, zstream)
        else:
            yield raw


def layer_diff_id(path: Path) -> str:
    """The diff id (sha256 of the uncompressed tar) of a layer blob."""
    with open_layer(path) as stream:
        return _HashingReader(stream).drain()


def unpack_layer(
    blob: Path, dest: Path, use_openat2: bool = True, limits: UnpackLimits | None = None
) -> str:
    """Unpack the layer `blob` into the empty directory `dest`.

    On an error `dest` may hold part of the layer (the caller removes it), but nothing
    outside `dest` was touched.

    Args:
        blob: The layer blob (plain, gzip or zstd tar).
        dest: An empty directory on a filesystem that keeps trusted.* xattrs.
        use_openat2: Resolve with openat2 when the kernel has it (tests turn it off).
        limits: The bounds on the unpacked bytes and entries (`UnpackLimits()`: the
            defaults), measured against the free space of `dest`'s filesystem.

    Returns:
        The layer's diff id, hashed while it was unpacked.

    Raises:
        LayerError: the tarball is malformed, tries to leave `dest`, or is over a limit.
    """
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        budget = (limits or UnpackLimits()).budget(root_fd)
        with open_layer(blob) as stream:
            reader = _HashingReader(stream, budget, blob.name)
            beneath = Beneath(root_fd, use_openat2)
            try:
                with tarfile.open(
                    fileobj=cast(IO[bytes], reader), mode="r|", tarinfo=BoundedTarInfo
                ) as tar:
                    unpacker = _Unpacker(tar, beneath, budget, blob.name)
                    run_confined(root_fd, unpacker.run)
                unpacker.mark_opaque()
            except (
                tarfile.TarError,
                EOFError,
                OSError,
                zlib.error,
                ZstdError,
                OverflowError,
                ValueError,
            ) as exc:  # out-of-range times, owners, device numbers
                raise LayerError(f"cannot unpack layer {blob.name}: {exc}") from exc
            return reader.drain()
    finally:
        os.close(root_fd)


@dataclass(slots=True)
class _DirAttrs:
    parts: tuple[str, ...]
    ident: tuple[int, int]  # (st_dev, st_ino) of the directory this entry made or kept
    mode: int
    mtime: int


@dataclass
class _Unpacker:
    tar: tarfile.TarFile
    fs: Beneath
    budget: Budget
    layer: str
    dirs: list[_DirAttrs] = field(default_factory=list)
    opaque: list[tuple[str, ...]] = field(default_factory=list)
    chown: bool = field(default_factory=lambda: os.geteuid() == 0)
    exact_umask: bool = False

    def run(self, confinement: Confinement) -> None:
        self.exact_umask = confinement.private_fs
        while (member := self.tar.next()) is not None:
            # tarfile keeps every header it read: a layer of a million entries would be
            # a million TarInfo objects held; hard links are resolved here, not by it
            self.tar.members.clear()  # type: ignore[attr-defined]
            self.budget.spend_entry(self.layer)
            try:
                self.entry(member)
            except UnsafePath as exc:
                raise LayerError(f"layer entry {member.name[:200]!r} refused: {exc}") from exc
        for attrs in sorted(self.dirs, key=lambda d: len(d.parts), reverse=True):
            self.dir_metadata(attrs)

    def entry(self, member: tarfile.TarInfo) -> None:
        if not member.name:
            raise UnsafePath("an entry has an empty name")
        parts = split_name(member.name)
        if not parts:
            if not member.isdir():
                raise UnsafePath(f"{member.name!r}: the layer root must be a directory")
            self.dirs.append(
                _DirAttrs(
                    (), _ident(os.fstat(self.fs.root_fd)), member.mode & 0o7777, int(member.mtime)
                )
            )
            return
        *parents, base = parts
        if any(p.startswith(WHITEOUT_META_PREFIX) for p in parents) or (
            base.startswith(WHITEOUT_META_PREFIX) and base != OPAQUE_MARKER
        ):
            log.debug("unpack.whiteout_meta_skipped", name=member.name)
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content
        with self.fs.directory(tuple(parents), create=True) as parent:
            if base == OPAQUE_MARKER:
                self.opaque.append(tuple(parents))
            elif base.startswith(WHITEOUT_PREFIX):
                self.whiteout(parent, base[len(WHITEOUT_PREFIX) :], member.name)
            else:
                self.fs.remove(parent, base, keep_dir=member.isdir())
                self.create(member, parent, base, parts)

    def whiteout(self, parent: int, target: str, name: str) -> None:
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise UnsafePath(f"{name!r} is a whiteout of {target!r}, which names no entry")
        self.fs.remove(parent, target)
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)

    def create(
        self, member: tarfile.TarInfo, parent: int, base: str, parts: tuple[str, ...]
    ) -> None:
        mode = member.mode & 0o7777
        if member.isreg():
            self.write_file(member, parent, base)
        elif member.isdir():
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=parent)
            with self.fs.directory((base,), at=parent) as fd:  # an existing one, or new
                if self.chown:
                    os.fchown(fd, member.uid, member.gid)
                self.xattrs(member, fd)
                self.dirs.append(_DirAttrs(parts, _ident(os.fstat(fd)), mode, int(member.mtime)))
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            self.owner(member, parent, base)
            os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            self.hard_link(member, parent, base)
        elif member.ischr() or member.isblk() or member.isfifo():
            self.special(member, parent, base, mode)
        else:
            log.warning("unpack.entry_skipped", name=member.name, type=member.type)

    def write_file(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        source = self.tar.extractfile(member)
        if source is None:
            raise UnsafePath(f"{member.name!r} has no data")
        with os.fdopen(os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent), "wb") as out:
            if member.sparse is None:
                shutil.copyfileobj(source, out, 1 << 20)
            else:  # only the data runs are written: the holes stay holes, not zeros
                runs = cast(list[tuple[int, int]], member.sparse)  # typeshed says bytes
                # the raw reader seeks forward in a stream (the buffered one cannot)
                raw = cast(IO[bytes], cast(io.BufferedReader, source).raw)
                for offset, size in runs:
                    raw.seek(offset)
                    out.seek(offset)
                    _copy_exactly(raw, out, size)
                out.truncate(member.size)
            out.flush()
            fd = out.fileno()
            if self.chown:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
            self.xattrs(member, fd)
            os.utime(fd, (member.mtime, member.mtime))

    def hard_link(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        link = split_name(member.linkname.lstrip("/"))
        if not link:
            raise UnsafePath(f"{member.name!r} is a hard link to the layer root")
        with self.fs.directory(link[:-1]) as source_dir:
            if self.fs.lstat(source_dir, link[-1]) is None:
                raise UnsafePath(
                    f"{member.name!r} is a hard link to {member.linkname!r}, "
                    "which is not in this layer"
                )
            # not followed: a link to a symlink links the symlink; the inode's metadata
            # is the source's, so nothing else is set
            os.link(link[-1], base, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)

    def special(self, member: tarfile.TarInfo, parent: int, base: str, mode: int) -> None:
        mode &= 0o1777  # set-id bits mean nothing on a device or fifo (and chown drops them)
        if member.isfifo():
            os.mkfifo(base, mode, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | mode, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        self.owner(member, parent, base)
        if not self.exact_umask:  # the shared umask took bits away; not chrooted here,
            # so glibc's fchmodat(AT_SYMLINK_NOFOLLOW) works (and never follows)
            os.chmod(base, mode, dir_fd=parent, follow_symlinks=False)
        os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def owner(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        if self.chown:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)

    def xattrs(self, member: tarfile.TarInfo, fd: int) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if not name.startswith(_KEPT_XATTRS):
                log.debug("unpack.xattr_refused", name=member.name, xattr=name)
                continue  # trusted.overlay.* and friends would steer overlayfs
            try:
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                log.debug("unpack.xattr_not_kept", name=member.name, xattr=name, error=str(exc))

    def dir_metadata(self, attrs: _DirAttrs) -> None:
        """Set a directory's final mode and mtime, if it is still the one its entry made."""
        try:
            with self.fs.directory(attrs.parts) as fd:
                if _ident(os.fstat(fd)) != attrs.ident:
                    return  # removed and made again by a later entry: not this one's
                os.fchmod(fd, attrs.mode)
                os.utime(fd, (attrs.mtime, attrs.mtime))
        except UnsafePath:
            return  # replaced by a symlink, a file or a whiteout: nothing to set

    def mark_opaque(self) -> None:  # not confined: trusted.* needs CAP_SYS_ADMIN
        """Set the opaque xattr on each directory that had a marker."""
        for parts in self.opaque:
            try:
                with self.fs.directory(parts) as fd:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
            except UnsafePath:
                log.debug("unpack.opaque_dir_gone", path="/".join(parts))


def _copy_exactly(source: IO[bytes], out: IO[bytes], size: int) -> None:
    while size > 0:
        chunk = source.read(min(size, 1 << 20))
        if not chunk:
            raise LayerError("a sparse file's data ends early")
        out.write(chunk)
        size -= len(chunk)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)
