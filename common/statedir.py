"""State directories: made private (0700) to the daemon's user, and kept that way.

A daemon's state dir holds keys, secrets and container filesystems. systemd's
`StateDirectoryMode=0700` covers the units; a daemon started by hand, a test or
`deploy/local-cluster` creates the dir itself, and a dir left looser by an older
version or a careless `mkdir` is tightened at start with a log line.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import structlog

from dockyard.common.atomic_file import write_atomic

__all__ = ["PRIVATE_MODE", "ensure_private_dir", "write_private"]

log = structlog.get_logger(__name__)

PRIVATE_MODE = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700, or tighten it to 0700.

    Only the dir itself is tightened: parents that exist are the host's business,
    and new parents get the default mode. A symlink is refused (it could point the
    chmod at any directory).
    """
    if path.is_symlink():
        raise OSError(f"state dir {path} is a symlink: give the directory itself")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_MODE)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
            log.warning("state_dir.tightened", path=str(path), was=oct(mode), now=oct(PRIVATE_MODE))
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only: 0600 from the first byte, synced
    with its directory, so that a crash leaves the old file or the new one whole."""
    write_atomic(path, data, mode=0o600)
