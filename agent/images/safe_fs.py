"""File operations confined beneath one directory: no symlink followed, no `..`.

Every lookup starts at the root's directory file descriptor. A parent directory is
opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV) where the kernel has it (Linux 5.6+), else one component at a time
with O_NOFOLLOW | O_DIRECTORY; the last component is always acted on with `dir_fd=`
and without following symlinks. Names are split and checked first, so `..`, absolute
names and NUL bytes never reach the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "Beneath",
    "UnsafePath",
    "have_openat2",
    "split_name",
]

MAX_NAME_BYTES = 4095  # PATH_MAX less the NUL: the kernel refuses longer paths anyway
MAX_COMPONENT_BYTES = 255  # NAME_MAX
MAX_DEPTH = 256  # far beyond real images; bounds the per-component walk

_SYS_OPENAT2 = 437  # the same number on every architecture (unified table, Linux 5.6)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A name that would leave the root, pass through a symlink or is malformed."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_state: list[bool] = []  # probed once: [available]


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = int(
        _libc.syscall(
            _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def have_openat2() -> bool:
    """Whether openat2 works here (not on old kernels or under some seccomp filters)."""
    if not _openat2_state:
        root = os.open("/", _DIR_FLAGS)
        try:
            os.close(_openat2(root, ".", _DIR_FLAGS))
            _openat2_state.append(True)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            _openat2_state.append(False)
        finally:
            os.close(root)
    return _openat2_state[0]


def split_name(name: str) -> tuple[str, ...]:
    """The components of a relative name; `.` and empty components dropped.

    Raises:
        UnsafePath: absolute, `..`, NUL, too long or too deep.
    """
    if "\0" in name:
        raise UnsafePath(f"{name!r} contains a NUL byte")
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise UnsafePath(f"{name[:60]!r}... is too long ({len(os.fsencode(name))} bytes)")
    if name.startswith("/"):
        raise UnsafePath(f"{name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafePath(f"{name!r} escapes the layer root (..)")
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"{name[:60]!r}... is too deep ({len(parts)} levels)")
    for part in parts:
        if len(os.fsencode(part)) > MAX_COMPONENT_BYTES:
            raise UnsafePath(f"{name[:60]!r}: a component is too long ({part[:30]!r}...)")
    return parts


class Beneath:
    """Operations on names beneath an open root directory (which the caller owns).

    Args:
        root_fd: An open directory file descriptor; never closed here.
        use_openat2: Use openat2 when the kernel has it (tests turn it off).
    """

    def __init__(self, root_fd: int, use_openat2: bool = True) -> None:
        self.root_fd = root_fd
        self.openat2 = use_openat2 and have_openat2()

    @contextlib.contextmanager
    def directory(
        self, parts: tuple[str, ...], create: bool = False, at: int | None = None
    ) -> Iterator[int]:
        """An fd of the directory `parts` (the root for `()`), closed on exit.

        Args:
            parts: Components from `split_name`.
            create: Make missing directories (mode 0755) on the way.
            at: Resolve from this directory fd (one already resolved beneath the
                root) instead of the root.

        Raises:
            UnsafePath: a component is a symlink or not a directory, or is missing
                and `create` is false.
        """
        fd = self._open_dir(self.root_fd if at is None else at, parts, create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, start: int, parts: tuple[str, ...], create: bool) -> int:
        if not parts:
            return os.dup(start)
        if self.openat2:
            try:
                return _openat2(start, "/".join(parts), _DIR_FLAGS)
            except OSError as exc:
                if exc.errno not in (
                    errno.ENOENT,
                    errno.ELOOP,
                    errno.ENOTDIR,
                    errno.EXDEV,
                    errno.EAGAIN,
                ):
                    raise
                # walk it for the exact reason, or to create what is missing
        current = os.dup(start)
        try:
            for index, part in enumerate(parts):
                nxt = self._step(current, part, create, parts[: index + 1])
                os.close(current)
                current = nxt
        except BaseException:
            os.close(current)
            raise
        return current

    def _step(self, parent: int, part: str, create: bool, so_far: tuple[str, ...]) -> int:
        where = "/".join(so_far)
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise UnsafePath(f"{where!r} does not exist") from None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.lstat(part, dir_fd=parent).st_mode):
                raise UnsafePath(
                    f"{where!r} is a symlink: it would be written through a symlink"
                ) from None
            raise UnsafePath(f"{where!r} is not a directory") from None
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=parent)
        return self._step(parent, part, False, so_far)

    @staticmethod
    def lstat(parent: int, name: str) -> os.stat_result | None:
        """`name` in `parent`, not followed; None if it does not exist."""
        try:
            return os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None

    @staticmethod
    def remove(parent: int, name: str, keep_dir: bool = False) -> None:
        """Remove `name` from `parent` (a directory recursively, never through a symlink).

        With `keep_dir`, an existing directory (not a symlink to one) is left alone.
        """
        st = Beneath.lstat(parent, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
