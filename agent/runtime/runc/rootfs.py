"""A container's root filesystem: the image's layers under an overlayfs with the
container's own writable upper layer.

The image's lower dirs are never written: every change lands in ``upper``, which belongs
to this container alone and is deleted with it. Mounting goes through libc ``mount(2)`` in
a worker thread (no subprocess per container).

The containers' directory is a private mount of its own (``private_mount_root``, as
moby's graph drivers do with their home): where the host's ``/`` is shared (systemd),
an overlay mounted below it would otherwise propagate to every peer and slave mount
namespace of the host, one more mount in each for every container.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import structlog

from dockyard.agent.runtime.base import ContainerRuntimeError, InvalidConfig
from dockyard.common.threads import to_thread_to_end

__all__ = [
    "VOLATILE_MARKER",
    "ContainerLayer",
    "is_mounted",
    "mounted_under",
    "private_mount_root",
    "propagation",
    "release_mount_root",
]

log = structlog.get_logger(__name__)

# What a volatile overlay leaves in its workdir (also after a clean unmount): the kernel
# refuses to mount it again while it exists (Documentation/filesystems/overlayfs.rst).
VOLATILE_MARKER = Path("work/incompat/volatile")

_MNT_DETACH = 2
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
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


def _entries_at(path: Path) -> list[list[str]]:
    """The mountinfo lines (split) of the mounts at exactly ``path``, bottom first."""
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [fields for line in f if _unescape((fields := line.split())[4]) == target]


def propagation(fields: Sequence[str]) -> str:
    """``shared``, ``slave`` or ``private`` from one mountinfo line's optional fields."""
    optional = fields[6 : fields.index("-")]
    if any(tag.startswith("shared:") for tag in optional):
        return "shared"
    if any(tag.startswith("master:") for tag in optional):
        return "slave"
    return "private"


def _mount_call(source: str | None, target: Path, flags: int) -> None:
    src = source.encode() if source is not None else None
    if _libc.mount(src, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise ContainerRuntimeError(f"mount {target} (flags {flags:#x}): {os.strerror(err)}")


def private_mount_root(root: Path) -> str:
    """Make ``root`` a mount point with private propagation (blocking; idempotent).

    Not yet a mount point: bound onto itself, then made private. Already one (an earlier
    agent's bind, or the admin's own filesystem): made private (with what is below it,
    all inside ``root``) unless it is already; never a second bind. Returns what was
    done: ``bound``, ``made-private``, ``already`` or ``busy`` (nothing: not a mount
    point, but mounts below it, e.g. running containers of an agent that predates this;
    a bind would hide them).
    """
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    entries = _entries_at(root)
    if entries:
        if propagation(entries[-1]) == "private":
            return "already"
        _mount_call(None, root, _MS_PRIVATE | _MS_REC)
        return "made-private"
    if mounted_under(root):
        return "busy"
    _mount_call(str(root), root, _MS_BIND)
    _mount_call(None, root, _MS_PRIVATE)
    return "bound"


def release_mount_root(root: Path) -> bool:
    """Unmount ``root``'s own bind when nothing is mounted below it (blocking).

    Only our bind (a mount whose source is ``root`` itself on the same filesystem) is
    undone; with containers' rootfs still mounted below, it stays (the next agent start
    finds it). Returns whether it was unmounted.
    """
    root = root.resolve()
    entries = _entries_at(root)
    if len(entries) != 1 or mounted_under(root) != [root]:
        return False
    if entries[0][3] == "/" or not str(root).endswith(entries[0][3]):
        return False  # a filesystem of its own, or not our bind of root: not ours to undo
    return bool(_libc.umount2(str(root).encode(), 0) == 0)


def is_mounted(path: Path) -> bool:
    """Whether the directory ``path`` is a mount point (blocking: call from a thread).

    ``os.path.ismount``'s test (another device than its parent's, or the same inode: a
    bind of the filesystem's root) without its ``realpath``, which ``lstat``s every
    component of the path in Python: the kernel resolves ``path/..`` to the real
    parent itself. Anything but a directory (a symlink: never a mount point) is left
    to ``ismount``. No read of /proc/self/mountinfo (which grows with every container).
    """
    try:
        own = os.lstat(path)
    except (OSError, ValueError):
        return False
    if not stat.S_ISDIR(own.st_mode):
        return os.path.ismount(path)
    try:
        parent = os.lstat(os.path.join(path, ".."))
    except OSError:
        return False
    return own.st_dev != parent.st_dev or own.st_ino == parent.st_ino


def mounted_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (blocking)."""
    prefix = str(root).rstrip("/") + "/"
    found = [Path(p) for p in _mount_points() if p == str(root) or p.startswith(prefix)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _mount_overlay(
    lower: Sequence[Path],
    upper: Path,
    work: Path,
    target: Path,
    fresh: bool = False,
    volatile: bool = False,
) -> bool:
    """Mount unless mounted already; whether this call mounted it (blocking).

    A mounted ``target`` is found first, before any directory is made or layer checked
    (a start after its create finds the create's mount). ``fresh``: the container's
    directory was just made, so none of the three exists and nothing is mounted there.
    ``volatile``: see :class:`ContainerLayer`.
    """
    if not fresh and is_mounted(target):
        return False
    for d in (upper, work, target):
        if fresh:
            os.mkdir(d)
        else:
            d.mkdir(parents=True, exist_ok=True)
    for d in lower:
        if not d.is_dir():
            raise InvalidConfig(f"image layer directory {d} does not exist")
    options = f"lowerdir={':'.join(str(d) for d in lower)},upperdir={upper},workdir={work}"
    if len(options) + len(",volatile") >= os.sysconf("SC_PAGE_SIZE"):
        raise ContainerRuntimeError(
            f"overlay options for {target} exceed one page ({len(options)} bytes): too many layers"
        )
    if volatile and _volatile.supported:
        if not fresh:  # mounted volatile before: the kernel refuses its marker
            shutil.rmtree(work / VOLATILE_MARKER, ignore_errors=True)
        if _mount(target, options + ",volatile") == 0:
            return True
        if ctypes.get_errno() != errno.EINVAL or _mount(target, options) != 0:
            raise ContainerRuntimeError(
                f"mount overlay on {target} failed: {os.strerror(ctypes.get_errno())}"
            )
        _volatile.supported = False  # a kernel before 5.10: plain mounts from now on
        log.warning("overlay.volatile_unsupported", kernel=os.uname().release)
        return True
    if _mount(target, options) != 0:
        err = ctypes.get_errno()
        raise ContainerRuntimeError(f"mount overlay on {target} failed: {os.strerror(err)}")
    return True


def _mount(target: Path, options: str) -> int:
    return int(_libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode()))


class _VolatileSupport:
    """Whether this kernel mounts overlays ``volatile`` (Linux 5.10+); found on first use."""

    supported = True


_volatile = _VolatileSupport()


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
    """The rootfs mount of one container: ``lower`` (read-only) + ``upper``/``work``.

    ``volatile``: the writable layer serves one run and is deleted after it (``--rm``,
    ``Containers.Run``, a service's task), so nothing in it must survive a host crash:
    the overlay is mounted ``volatile`` and the kernel skips every sync of it. Without
    that, the unmount after the exit syncs the whole filesystem the upper layer is on (overlayfs'
    ``sync_fs``), which waits for every other writer's dirty data on the host.
    """

    def __init__(self, lower_dirs: Sequence[Path], base: Path, volatile: bool = False) -> None:
        """``base`` is the container's directory; the layer lives in it."""
        if not lower_dirs:
            raise InvalidConfig("a container needs at least one image layer directory")
        self.lower_dirs = list(lower_dirs)
        self.upper = base / "upper"
        self.work = base / "work"
        self.target = base / "rootfs"
        self.volatile = volatile

    async def mount(self) -> bool:
        """Mount the overlay unless it is already mounted; whether this call mounted it.

        A cancelled caller cannot know of a mount: cancelled, the mount still finishes
        and one this call made is undone before the cancellation goes on.
        """
        return await to_thread_to_end(
            lambda: _mount_overlay(
                self.lower_dirs, self.upper, self.work, self.target, volatile=self.volatile
            ),
            lambda mounted: _unmount(self.target) if mounted else None,
        )

    def mount_blocking(self, fresh: bool = False) -> Path:
        """``mount`` for a caller already in a worker thread (``fresh``: the layer's
        directory was just made, see ``_mount_overlay``)."""
        _mount_overlay(self.lower_dirs, self.upper, self.work, self.target, fresh, self.volatile)
        return self.target

    async def unmount(self) -> None:
        """Unmount the overlay if mounted (the writable layer stays); done also when the
        caller is cancelled meanwhile (a plain ``to_thread`` could drop it)."""
        await to_thread_to_end(lambda: _unmount(self.target))

    def unmount_blocking(self) -> None:
        """``unmount`` for a caller already in a worker thread."""
        _unmount(self.target)
