"""A path inside an image's root filesystem resolved as Docker resolves a COPY, ADD or
WORKDIR destination: symlinks followed, but scoped to the root.

The semantics of Go's ``securejoin`` (``openat2(RESOLVE_IN_ROOT)``): an absolute link
target starts again at the image's root, a ``..`` at the root stays there, so no link
(``/evil -> /../../../../etc``) ever leads out of it. A component that does not exist
is taken as written (a later ``..`` removes it again). At
most ``MAX_LINKS`` symlinks are followed (the kernel's own bound). The answer is a
plain path with no symlink of the image left in its existing part, so the confined
writers (``safe_fs.Beneath``, no symlink followed) act on it. Blocking: use a thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dockyard.agent.images.safe_fs import Beneath, UnsafePath, split_name

__all__ = ["MAX_LINKS", "resolve_in_root"]

MAX_LINKS = 40  # Linux's MAXSYMLINKS: past it a lookup is ELOOP
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _words(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


class _Resolver:
    def __init__(self, root_fd: int, path: str) -> None:
        self.beneath = Beneath(root_fd)
        self.path = path
        self.done: list[str] = []
        self.links = 0

    def _lstat(self, part: str) -> os.stat_result | None:
        try:
            with self.beneath.directory(tuple(self.done)) as parent:
                return os.lstat(part, dir_fd=parent)
        except (OSError, UnsafePath):  # missing, under a non-directory, a name too long
            return None

    def _readlink(self, part: str) -> str:
        with self.beneath.directory(tuple(self.done)) as parent:
            return os.readlink(part, dir_fd=parent)

    def run(self) -> str:
        pending = _words(self.path)
        pending.reverse()  # a stack: the next component last
        while pending:
            part = pending.pop()
            if part == "..":
                if self.done:
                    self.done.pop()
                continue
            found = self._lstat(part)
            if found is None or not stat.S_ISLNK(found.st_mode):
                self.done.append(part)
                continue
            self.links += 1
            if self.links > MAX_LINKS:
                raise UnsafePath(f"{self.path!r}: more than {MAX_LINKS} symlinks on the way")
            target = self._readlink(part)
            if target.startswith("/"):
                self.done = []
            pending.extend(reversed(_words(target)))
        return "/" + "/".join(split_name("/".join(self.done)))


def resolve_in_root(rootfs: Path, path: str) -> str:
    """``path`` (absolute, in the image) with the image's symlinks followed inside
    ``rootfs``; an absolute path, never leaving the root.

    Raises:
        UnsafePath: too many symlinks, or the answer is too long or too deep.
    """
    root_fd = os.open(rootfs, _DIR_FLAGS)
    try:
        return _Resolver(root_fd, path).run()
    finally:
        os.close(root_fd)
