"""Files replaced whole: a crash, a full disk or a second writer leaves the old file or
the new one, never a half-written one, and never a stray temporary.

Every daemon and the CLI write their state through `write_atomic`: a temporary of its
own next to the target (unique, `O_EXCL | O_NOFOLLOW`: a name planted there is never
written through), its mode (and owner) set before the first byte, then a rename over
the target; `durable` also syncs the data before the rename and the directory after
it, so that the rename survives a power cut. (`atomicwrites`, the library this is, is
archived and unmaintained.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
    make_parent: bool = True,
) -> None:
    """Replace `path` with `data`, whole.

    Args:
        mode: The file's permission bits, exactly (the umask does not apply).
        owner: (uid, gid) to give the file before its data is written.
        durable: Sync the data and the directory (what must survive a power cut);
            False for records a restart can rebuild or does without, on a hot path.
        make_parent: Create missing parent directories (else FileNotFoundError).
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        _sync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
