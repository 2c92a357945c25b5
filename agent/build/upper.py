"""A container's overlayfs upper directory as an OCI layer blob.

What the container changed is its upper dir: new and changed files as they are, a
deleted lower entry as a 0/0 character device, a directory that hides everything below
it with the ``trusted.overlay.opaque=y`` xattr. The layer carries them the OCI way:
``.wh.NAME`` for a deletion, ``DIR/.wh..wh..opq`` for an opaque directory; file
capabilities and ``user.*`` xattrs as PAX ``SCHILY.xattr.*`` records (``xattrs.py``).
The walk uses directory fds on an explicit stack (no recursion: any depth) and never
follows a symlink (the container wrote this tree); a name deeper or longer than the
image store unpacks fails the commit naming it. Mount points the runtime made
(``/etc/hosts``, ``/etc/resolv.conf``, ``/etc/hostname``) are not content, as Docker's
init layer is not. Blocking: run in a thread.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from dockyard.agent.build.tree_tar import walk_tree
from dockyard.agent.build.xattrs import pax_xattrs
from dockyard.agent.images.authoring import LayerWriter
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.models import Layer
from dockyard.agent.images.safe_fs import MAX_DEPTH, MAX_NAME_BYTES

__all__ = ["RUNTIME_FILES", "UnsupportedUpper", "layer_from_upper"]

RUNTIME_FILES = frozenset({"etc/hosts", "etc/resolv.conf", "etc/hostname"})
"""Files the runtime bind-mounts over; their mount points are not committed."""
OPAQUE_XATTR = "trusted.overlay.opaque"
METACOPY_XATTR = "trusted.overlay.metacopy"
REDIRECT_XATTR = "trusted.overlay.redirect"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


class UnsupportedUpper(ValueError):
    """An upper dir that cannot be committed as it is: written with overlayfs features
    whose entries are not the content (``metacopy``: a file's data stays below;
    ``redirect_dir``: a renamed directory), or with a name the image store's unpacker
    refuses (deeper than ``MAX_DEPTH`` levels, longer than ``MAX_NAME_BYTES``)."""


def _check_plain(fd: int, arcname: str) -> None:
    for name in (METACOPY_XATTR, REDIRECT_XATTR):
        try:
            os.getxattr(fd, name)
        except OSError:
            continue
        raise UnsupportedUpper(
            f"{arcname}: the container's layer uses overlayfs {name.rsplit('.', 1)[-1]} "
            "(mount option metacopy or redirect_dir on this host); it cannot be committed"
        )


def _check_name(arcname: str) -> None:
    """A name the image store would refuse to unpack fails the commit here, naming it."""
    depth = arcname.count("/") + 1
    if depth > MAX_DEPTH:
        raise UnsupportedUpper(
            f"{arcname[:60]}...: {depth} directory levels deep; "
            f"a layer holds at most {MAX_DEPTH}, it cannot be committed"
        )
    if len(os.fsencode(arcname)) > MAX_NAME_BYTES:
        raise UnsupportedUpper(
            f"{arcname[:60]}...: a path longer than {MAX_NAME_BYTES} bytes cannot be committed"
        )


class _Walk:
    """Depth first, in sorted order, with an explicit stack of directory fds (at most
    ``MAX_DEPTH`` open): no recursion, so no tree is too deep for Python's stack."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.links: dict[tuple[int, int], str] = {}

    def _info(self, name: str, found: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mode = found.st_mode & 0o7777
        info.uid, info.gid = found.st_uid, found.st_gid
        info.mtime = int(found.st_mtime)
        return info

    def run(self, root_fd: int) -> None:
        walk_tree(os.dup(root_fd), "", self.entry)

    def _directory(self, parent: int, name: str, info: tarfile.TarInfo) -> int:
        """Write a directory's entry; returns its fd (the caller walks and closes it)."""
        info.type = tarfile.DIRTYPE
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            _check_plain(fd, info.name)
            info.pax_headers = pax_xattrs(fd)
            self.tar.addfile(info)
            if _is_opaque(fd):
                self.tar.addfile(tarfile.TarInfo(f"{info.name}/.wh..wh..opq"))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def entry(self, parent: int, name: str, arcname: str) -> int | None:
        """Write one entry; a directory's fd is returned, to be walked."""
        if arcname in RUNTIME_FILES:
            return None
        _check_name(arcname)
        found = os.lstat(name, dir_fd=parent)
        mode = found.st_mode
        if stat.S_ISCHR(mode) and found.st_rdev == os.makedev(0, 0):
            head, _, base = arcname.rpartition("/")
            whiteout = tarfile.TarInfo(f"{head}/.wh.{base}" if head else f".wh.{base}")
            whiteout.mtime = int(found.st_mtime)
            self.tar.addfile(whiteout)
            return None
        info = self._info(arcname, found)
        if stat.S_ISDIR(mode):
            return self._directory(parent, name, info)
        key = (found.st_dev, found.st_ino)
        if found.st_nlink > 1 and key in self.links:
            info.type = tarfile.LNKTYPE
            info.linkname = self.links[key]
            self.tar.addfile(info)
            return None
        if found.st_nlink > 1:
            self.links[key] = arcname
        self._other(parent, name, info, found)
        return None

    def _other(self, parent: int, name: str, info: tarfile.TarInfo, found: os.stat_result) -> None:
        mode = found.st_mode
        if stat.S_ISREG(mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            with os.fdopen(fd, "rb") as source:
                _check_plain(fd, info.name)
                info.size = os.fstat(source.fileno()).st_size
                info.pax_headers = pax_xattrs(fd)
                self.tar.addfile(info, source)
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=parent)
            self.tar.addfile(info)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
            self.tar.addfile(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(found.st_rdev), os.minor(found.st_rdev)
            self.tar.addfile(info)
        # sockets are not content (docker skips them too)


def layer_from_upper(blobs: BlobStore, upper: Path) -> Layer:
    """Write the changes in ``upper`` as a gzip'd layer blob; returns the stored layer."""
    writer = LayerWriter(blobs, "gzip", level=1)
    try:
        fd = os.open(upper, _DIR_FLAGS)
        try:
            _Walk(writer.tar).run(fd)
        finally:
            os.close(fd)
    except BaseException:
        writer.discard()
        raise
    return writer.close()
