"""Run a blocking function in a thread fenced to one directory with fewer privileges.

The thread gets its own filesystem context (`unshare(CLONE_FS)`: root, cwd and umask
are per thread then), a umask of 0, a chroot into the directory when it may chroot
(root), and keeps only the capabilities that writing a layer needs: CHOWN,
DAC_OVERRIDE, FOWNER, FSETID, MKNOD, SETFCAP. Capabilities are per thread on Linux, so
the rest of the process keeps its own; the thread exits when the function returns and
its credentials and fs context go with it. Without root (tests, rootless) the chroot is
skipped and the capability sets are already empty.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

__all__ = ["KEEP_CAPABILITIES", "Confinement", "capabilities", "run_confined"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID = 0, 1, 3, 4
CAP_MKNOD, CAP_SETFCAP = 27, 31
KEEP_CAPABILITIES = frozenset(
    {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_MKNOD, CAP_SETFCAP}
)
_CLONE_FS = 0x00000200
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def capabilities() -> tuple[int, int]:
    """The calling thread's (effective, permitted) capability masks."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
    )


def _drop_capabilities(keep: frozenset[int]) -> None:
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    mask = sum(1 << cap for cap in keep)
    for index in (0, 1):
        word = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective &= word
        data[index].permitted &= word
        data[index].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


@dataclass
class Confinement:
    """What a confined thread got (for logs and tests)."""

    private_fs: bool = False
    chrooted: bool = False
    capabilities_dropped: bool = False


def _confine(root_fd: int) -> Confinement:
    """Each step is best effort (a seccomp filter or a missing capability may refuse
    one): the fd-relative, no-follow operations are the fence; this is a second one."""
    got = Confinement()
    try:
        _check(_libc.unshare(_CLONE_FS), "unshare(CLONE_FS)")
        got.private_fs = True
    except OSError as exc:
        log.warning("unpack.confine.unshare_failed", error=str(exc))
    if got.private_fs:  # never chroot or change the umask of the whole process
        os.umask(0)
        if os.geteuid() == 0:
            try:
                os.fchdir(root_fd)
                os.chroot(".")
                got.chrooted = True
            except OSError as exc:
                log.warning("unpack.confine.chroot_failed", error=str(exc))
    try:
        _drop_capabilities(KEEP_CAPABILITIES)
        got.capabilities_dropped = True
    except OSError as exc:
        log.warning("unpack.confine.capset_failed", error=str(exc))
    return got


@dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    confinement: Confinement | None = None


def run_confined(root_fd: int, fn: Callable[[Confinement], T]) -> T:
    """Call `fn(confinement)` in a new confined thread and wait for it (blocking).

    Args:
        root_fd: The directory the thread is fenced to (chroot when root).
        fn: What to run; it is told what confinement it got, and must use only
            file descriptors it was given, since host paths are gone in a chroot.

    Raises:
        Whatever `fn` raised.
    """
    outcome: _Outcome[T] = _Outcome()

    def body() -> None:
        try:
            outcome.confinement = _confine(root_fd)
            outcome.value = fn(outcome.confinement)
        except BaseException as exc:  # handed to the caller's thread
            outcome.error = exc

    thread = threading.Thread(target=body, name="layer-unpack", daemon=True)
    thread.start()
    thread.join()
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]
