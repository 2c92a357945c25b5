"""runc run from a sealed in-memory copy of itself, made once per agent.

runc 1.1 guards the host's runc binary against a container that would overwrite it
(CVE-2019-5736) by copying its own binary into a sealed memfd at every container start,
and ``runc init`` re-executes that copy: about 9 MB copied and one exec more per start.
A runc that already runs from a sealed memfd skips both: ``is_self_cloned`` in
libcontainer/nsenter/cloned_binary.c accepts it ("an admin could bind-mount a sealed memfd
to /usr/bin/runc to allow re-use"), and a sealed memfd cannot be written by anyone.

The agent makes that copy at start-up and runs runc through a symlink named ``runc`` to
its descriptor (so that ``ps`` shows runc, not a number). The link is only valid while
this agent lives; the next agent makes its own. Without memfd sealing (an old kernel),
runc is run as it is.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["RUNC_SEALS", "SealedBinary", "seal_binary", "seals"]

log = structlog.get_logger(__name__)

_F_ADD_SEALS = 1033
_F_GET_SEALS = 1034
_F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 1, 2, 4, 8
RUNC_SEALS = _F_SEAL_SEAL | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE
"""What runc's ``is_self_cloned`` requires, exactly (cloned_binary.c's RUNC_MEMFD_SEALS)."""

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SealedBinary:
    """A sealed copy of a binary: ``path`` runs it while ``fd`` stays open."""

    path: str
    fd: int

    def close(self) -> None:
        os.close(self.fd)


def seal_binary(binary: str, link_dir: Path) -> SealedBinary | None:
    """A sealed memfd copy of ``binary`` and a link ``link_dir/<its name>`` to it
    (blocking). None, with a warning, when the kernel cannot seal a memfd."""
    name = os.path.basename(binary)
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError) as exc:
        log.warning("runc.sealed_copy_unavailable", binary=binary, error=str(exc))
        return None
    try:
        _copy_into(binary, fd)
        fcntl.fcntl(fd, _F_ADD_SEALS, RUNC_SEALS)
        link = link_dir / name
        link_dir.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
        temporary.replace(link)  # an earlier agent's link, now dangling, replaced whole
    except OSError as exc:
        os.close(fd)
        log.warning("runc.sealed_copy_unavailable", binary=binary, error=str(exc))
        return None
    return SealedBinary(str(link), fd)


def _copy_into(binary: str, fd: int) -> None:
    with open(binary, "rb") as source:
        while chunk := source.read(_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]


def seals(path: str) -> int:
    """The seals of the file ``path`` opens (-1: not a memfd)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.fcntl(fd, _F_GET_SEALS)
    except OSError:
        return -1
    finally:
        os.close(fd)
