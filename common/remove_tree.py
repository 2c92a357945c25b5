"""Removing a directory tree that a container wrote, however deep.

``shutil.rmtree`` (Python 3.11) recurses once per level: a tree deeper than the
recursion limit (``mkdir -p $(printf 'd/%.0s' $(seq 1200))`` in a container) raises
``RecursionError`` through ``ignore_errors`` and the tree stays on disk for good. This
walk keeps one directory fd open and a list of names per level: it goes down by
``openat`` without following a symlink, up by ``..`` checked against the inode it came
from, and never crosses into another filesystem (a mount left inside is not emptied).
Errors are skipped as ``rmtree(ignore_errors=True)`` skips them. Blocking.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import structlog

__all__ = ["remove_tree"]

log = structlog.get_logger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _ident(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _names(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []


class _Walk:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.device = os.fstat(fd).st_dev
        self.levels: list[tuple[tuple[int, int], list[str]]] = [(_ident(fd), _names(fd))]
        self.entered: list[str] = []  # the name of each level below the top, in its parent

    def _down(self, name: str) -> None:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError:
            return
        if os.fstat(child).st_dev != self.device:  # a mount point: left alone
            os.close(child)
            return
        os.close(self.fd)
        self.fd = child
        self.levels.append((_ident(child), _names(child)))
        self.entered.append(name)

    def _up(self) -> bool:
        """Back to the parent level and remove the emptied directory; False when the
        parent is not the directory we came from (moved meanwhile): stop."""
        self.levels.pop()
        parent = os.open("..", _DIR_FLAGS, dir_fd=self.fd)
        os.close(self.fd)
        self.fd = parent
        if _ident(parent) != self.levels[-1][0]:
            log.error("remove_tree.moved", name=self.entered[-1])
            return False
        with contextlib.suppress(OSError):
            os.rmdir(self.entered.pop(), dir_fd=parent)
        return True

    def run(self) -> None:
        while True:
            names = self.levels[-1][1]
            if not names:
                if len(self.levels) == 1 or not self._up():
                    return
                continue
            name = names.pop()
            try:
                found = os.lstat(name, dir_fd=self.fd)
            except OSError:
                continue
            if stat.S_ISDIR(found.st_mode):
                self._down(name)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self.fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it (a file or symlink: just it), skipping
    what cannot be removed."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError:  # not a directory (or a symlink to one): the name goes
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    walk = _Walk(fd)
    try:
        walk.run()
    finally:
        os.close(walk.fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)
