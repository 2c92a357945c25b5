"""A container's root filesystem: the image's layers under an overlayfs with the
container's own writable upper layer.

The image's lower dirs are never written: every change lands in ``upper``, which belongs
to this container alone and is deleted with it. Mounting goes through libc ``mount(2)`` in
a worker thread (no subprocess per container).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from dockyard.agent.runtime.base import ContainerRuntimeError, InvalidConfig

__all__ = ["ContainerLayer", "is_mounted", "mounted_under"]

log = structlog.get_logger(__name__)

_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _unescape(field: str) -> str:
    """Undo /proc/self/mountinfo octal escapes (``\\040`` for a space...)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [_unescape(line.split(" ", 5)[4]) for line in f]


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (blocking: call from a thread).

    An overlay has its own device number, so ``ismount`` answers without
    reading the whole of /proc/self/mountinfo (which grows with every container).
    """
    return os.path.ismount(path)


def mounted_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (blocking)."""
    prefix = str(root).rstrip("/") + "/"
    found = [Path(p) for p in _mount_points() if p == str(root) or p.startswith(prefix)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _mount_overlay(lower: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    for d in lower:
        if not d.is_dir():
            raise InvalidConfig(f"image layer directory {d} does not exist")
    if is_mounted(target):
        return
    options = f"lowerdir={':'.join(str(d) for d in lower)},upperdir={upper},workdir={work}"
    if len(options) >= os.sysconf("SC_PAGE_SIZE"):
        raise ContainerRuntimeError(
            f"overlay options for {target} exceed one page ({len(options)} bytes): too many layers"
        )
    rc = _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise ContainerRuntimeError(f"mount overlay on {target} failed: {os.strerror(err)}")


def _unmount(target: Path) -> None:
    if not is_mounted(target):
        return
    if _libc.umount2(str(target).encode(), 0) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:  # not a mount point any more
            return
        if err != errno.EBUSY or _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
            raise ContainerRuntimeError(f"unmount {target} failed: {os.strerror(err)}")


class ContainerLayer:
    """The rootfs mount of one container: ``lower`` (read-only) + ``upper``/``work``."""

    def __init__(self, lower_dirs: Sequence[Path], base: Path) -> None:
        """``base`` is the container's directory; the layer lives in it."""
        if not lower_dirs:
            raise InvalidConfig("a container needs at least one image layer directory")
        self.lower_dirs = list(lower_dirs)
        self.upper = base / "upper"
        self.work = base / "work"
        self.target = base / "rootfs"

    async def mount(self) -> Path:
        """Mount the overlay unless it is already mounted; return the mount point."""
        await asyncio.to_thread(_mount_overlay, self.lower_dirs, self.upper, self.work, self.target)
        return self.target

    async def unmount(self) -> None:
        """Unmount the overlay if mounted (the writable layer stays)."""
        await asyncio.to_thread(_unmount, self.target)

    def unmount_blocking(self) -> None:
        """``unmount`` for a caller already in a worker thread."""
        _unmount(self.target)
