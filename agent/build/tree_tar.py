"""A directory tree written into a tar stream, for `docker cp` out of a container and a
build's COPY/ADD.

The tree may be hostile (a container or a build step wrote it), so the walk goes depth
first in sorted order with an explicit stack of directory fds: no recursion, so no depth
exhausts Python's stack, and a tree deeper than ``MAX_DEPTH`` levels (what the image
store unpacks) is refused naming it, so no walk holds more than ``MAX_DEPTH`` fds. A
symlink is written as a link and never followed; devices, fifos and sockets are left
out. Blocking: run in a thread.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable

from dockyard.agent.build.xattrs import pax_xattrs
from dockyard.agent.images.safe_fs import MAX_DEPTH, UnsafePath

__all__ = ["TreeTar", "walk_tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _free(size: int) -> None:
    """No budget: every entry is taken."""


def _children(fd: int) -> list[str]:
    """A directory's names, last first (popped from the end: in sorted order)."""
    return sorted(os.listdir(fd), reverse=True)


Entry = Callable[[int, str, str], int | None]
"""Handles one name (its directory's fd, the name, its path in the archive); returns the
fd of a directory to walk into (the walk closes it), or None."""


def walk_tree(top: int, prefix: str, entry: Entry) -> None:
    """Every name under the directory ``top`` (closed here) to ``entry``, depth first in
    sorted order, with an explicit stack of directory fds (no recursion)."""
    stack: list[tuple[int, list[str], str]] = []
    try:
        stack.append((top, _children(top), prefix))
    except BaseException:
        os.close(top)
        raise
    try:
        while stack:
            fd, children, at = stack[-1]
            if not children:
                stack.pop()
                os.close(fd)
                continue
            name = children.pop()
            opened = entry(fd, name, f"{at}{name}")
            if opened is not None:
                try:
                    stack.append((opened, _children(opened), f"{at}{name}/"))
                except BaseException:
                    os.close(opened)
                    raise
    finally:
        for fd, _, _ in stack:
            os.close(fd)


class TreeTar:
    """Writes entries into ``tar``.

    ``owner`` is every entry's uid and gid (a build's COPY), else each file's own;
    ``xattrs`` carries file capabilities and ``user.*`` xattrs as PAX records; ``spend``
    is told each entry's size before it is written and raises to end the copy.
    """

    def __init__(
        self,
        tar: tarfile.TarFile,
        *,
        owner: tuple[int, int] | None = None,
        xattrs: bool = False,
        spend: Callable[[int], None] = _free,
    ) -> None:
        self.tar = tar
        self.owner = owner
        self.xattrs = xattrs
        self.spend = spend

    def add(self, parent: int, name: str, arcname: str) -> None:
        """``name`` in the directory ``parent`` as ``arcname``, and all under it."""
        opened = self._entry(parent, name, arcname)
        if opened is not None:
            self._walk(opened, f"{arcname}/")

    def contents(self, fd: int, prefix: str = "") -> None:
        """What the directory ``fd`` holds, each name under ``prefix`` (``""`` or
        ending in ``/``); ``fd`` stays the caller's."""
        self._walk(os.dup(fd), prefix)

    def _walk(self, top: int, prefix: str) -> None:
        walk_tree(top, prefix, self._entry)

    def _entry(self, parent: int, name: str, arcname: str) -> int | None:
        """Write one entry; a directory's fd is returned open for the walk."""
        depth = arcname.count("/") + 1
        if depth > MAX_DEPTH:
            raise UnsafePath(
                f"{arcname[:60]}...: {depth} directory levels deep; at most {MAX_DEPTH} are copied"
            )
        found = os.lstat(name, dir_fd=parent)
        info = tarfile.TarInfo(arcname)
        info.mode = found.st_mode & 0o7777
        info.uid, info.gid = self.owner or (found.st_uid, found.st_gid)
        info.mtime = int(found.st_mtime)
        if stat.S_ISDIR(found.st_mode):
            return self._directory(parent, name, info)
        if stat.S_ISREG(found.st_mode):
            self._file(parent, name, info)
        elif stat.S_ISLNK(found.st_mode):
            self.spend(0)
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=parent)
            self.tar.addfile(info)
        return None

    def _directory(self, parent: int, name: str, info: tarfile.TarInfo) -> int:
        self.spend(0)
        info.type = tarfile.DIRTYPE
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            if self.xattrs:
                info.pax_headers = pax_xattrs(fd)
            self.tar.addfile(info)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _file(self, parent: int, name: str, info: tarfile.TarInfo) -> None:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        with os.fdopen(fd, "rb") as source:
            info.size = os.fstat(fd).st_size
            self.spend(info.size)
            if self.xattrs:
                info.pax_headers = pax_xattrs(fd)
            self.tar.addfile(info, source)
