"""A build context: the uploaded tar unpacked safely, and the files COPY takes from it.

The tar (plain or gzip) is unpacked by the image layers' unpacker (``images/unpack.py``):
a confined thread, every name checked (no absolute path, no ``..``), nothing followed
through a symlink, within the layer limits (``unpack_limits.py``); names starting
``.wh.`` are refused rather than read as whiteouts. A symlink in the context stays a
symlink: COPY copies it as a link and never reads what it points to, so a link to
``/etc/shadow`` (or to ``../``) never reaches a host file. COPY's sources are matched
(globs too) by walking the unpacked tree from the context root without following a
symlink. Everything here blocks: callers use threads.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from dockyard.agent.build.dockerfile import MAX_DOCKERFILE_BYTES, DockerfileError
from dockyard.agent.images.confine import run_confined
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.safe_fs import Beneath, UnsafePath, split_name
from dockyard.agent.images.unpack import BoundedTarInfo, _HashingReader, _Unpacker, open_layer
from dockyard.agent.images.unpack_limits import UnpackLimits

__all__ = [
    "ContextError",
    "Source",
    "TarUnpacker",
    "find_sources",
    "read_dockerfile",
    "unpack_into",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SOURCES = 100_000


class ContextError(ValueError):
    """A context (or a COPY source in it) that cannot be used; the message says why."""


class TarUnpacker(_Unpacker):
    """The layer unpacker, but ``.wh.`` names are refused, not whiteouts."""

    def whiteout(self, parent: int, target: str, name: str) -> None:
        raise UnsafePath(f"{name!r}: names starting with .wh. are not accepted")

    def special(self, member: tarfile.TarInfo, parent: int, base: str, mode: int) -> None:
        # a fifo would block whoever opens it; a device node would reach the host's device
        raise UnsafePath(f"{member.name!r}: devices and fifos are not accepted")


def unpack_into(tar_path: Path, dest: Path, limits: UnpackLimits | None = None) -> None:
    """Unpack the tar at ``tar_path`` (plain, gzip or zstd) into the directory ``dest``.

    Raises:
        ContextError: a malformed tar, a name that would leave ``dest``, over a limit.
    """
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        budget = (limits or UnpackLimits()).budget(root_fd)
        with open_layer(tar_path) as stream:
            reader = _HashingReader(stream, budget, tar_path.name)
            with tarfile.open(
                fileobj=cast(IO[bytes], reader), mode="r|", tarinfo=BoundedTarInfo
            ) as tar:
                unpacker = TarUnpacker(tar, Beneath(root_fd), budget, tar_path.name)
                run_confined(root_fd, unpacker.run)
    except (LayerError, UnsafePath, tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise ContextError(str(exc)) from None
    except OSError as exc:
        raise ContextError(f"cannot unpack {tar_path.name}: {exc}") from None
    finally:
        os.close(root_fd)


def read_dockerfile(context: Path, name: str) -> str:
    """The Dockerfile ``name`` (relative to the context), read without following a link.

    Raises:
        DockerfileError: missing, not a regular file, too large, or not UTF-8.
    """
    try:
        parts = split_name(posixpath.normpath(name or "Dockerfile"))
    except UnsafePath as exc:
        raise DockerfileError(f"dockerfile: {exc}") from None
    if not parts:
        raise DockerfileError("dockerfile: a file name is required")
    root_fd = os.open(context, _DIR_FLAGS)
    try:
        with Beneath(root_fd).directory(parts[:-1]) as parent:
            if not stat.S_ISREG(os.lstat(parts[-1], dir_fd=parent).st_mode):
                raise DockerfileError(f"the Dockerfile {name} is not a regular file")
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise DockerfileError(f"the Dockerfile {name} is not a regular file")
                data = f.read(MAX_DOCKERFILE_BYTES + 1)
    except (FileNotFoundError, UnsafePath, NotADirectoryError):
        raise DockerfileError(
            f"Cannot locate specified Dockerfile: {name or 'Dockerfile'}"
        ) from None
    except OSError as exc:  # ELOOP: the Dockerfile is a symlink
        raise DockerfileError(f"cannot read the Dockerfile {name}: {exc.strerror}") from None
    finally:
        os.close(root_fd)
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise DockerfileError(f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise DockerfileError("the Dockerfile is not UTF-8 text") from None


@dataclass(frozen=True)
class Source:
    """One matched COPY source: its path in the context and whether it is a directory."""

    parts: tuple[str, ...]
    is_dir: bool


def _pattern_parts(pattern: str) -> tuple[str, ...]:
    normal = posixpath.normpath("/" + pattern).lstrip("/")
    if normal in ("", "."):
        return ()
    try:
        return split_name(normal)
    except UnsafePath as exc:
        raise ContextError(f"{pattern}: {exc}") from None


def _children(fd: int) -> list[str]:
    return sorted(os.listdir(fd))


def _match(fd: int, parts: tuple[str, ...], so_far: tuple[str, ...], out: list[Source]) -> None:
    head, rest = parts[0], parts[1:]
    names = (
        [n for n in _children(fd) if fnmatch.fnmatchcase(n, head)]
        if any(c in head for c in "*?[")
        else [head]
    )
    for name in names:
        try:
            found = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        is_dir = stat.S_ISDIR(found.st_mode)
        if not rest:
            out.append(Source((*so_far, name), is_dir))
            if len(out) > MAX_SOURCES:
                raise ContextError(f"more than {MAX_SOURCES} sources match")
        elif is_dir:  # never through a symlink
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _match(child, rest, (*so_far, name), out)
            finally:
                os.close(child)


def find_sources(context: Path, pattern: str) -> list[Source]:
    """The context entries ``pattern`` (a path, possibly with globs) names.

    Raises:
        ContextError: it leaves the context, or nothing matches.
    """
    parts = _pattern_parts(pattern)
    if not parts:
        return [Source((), True)]
    root_fd = os.open(context, _DIR_FLAGS)
    try:
        found: list[Source] = []
        _match(root_fd, parts, (), found)
    finally:
        os.close(root_fd)
    if not found:
        raise ContextError(f"{pattern}: no such file or directory in the build context")
    return found


@contextlib.contextmanager
def opened(context: Path, parts: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """The parent directory fd of ``parts`` (walked without symlinks) and the last name
    (``"."`` for the root)."""
    root_fd = os.open(context, _DIR_FLAGS)
    try:
        if not parts:
            yield root_fd, "."
            return
        with Beneath(root_fd).directory(parts[:-1]) as parent:
            yield parent, parts[-1]
    finally:
        os.close(root_fd)
