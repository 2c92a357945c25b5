"""COPY and ADD: context files into an image's root filesystem (mounted by the caller).

The sources (``context.find_sources``) are written into a tar with their names at the
destination, their owner (``--chown``, else root), and their file capabilities and
``user.*`` xattrs (``xattrs.py``; the context's unpacker kept them), then unpacked into
the root filesystem by the layer unpacker beneath the root. The caller resolves the
destination first (``in_root.resolve_in_root``: the image's symlinks followed inside
its root, as Docker does), so the unpacker, which follows no symlink, finds real
directories. ADD of a local tar archive (plain, gzip, zstd) unpacks it at the
destination; ADD of a URL is refused. Blocking: run in a thread.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from dockyard.agent.build.context import (
    ContextError,
    Source,
    TarUnpacker,
    opened,
)
from dockyard.agent.build.tree_tar import TreeTar
from dockyard.agent.images.confine import run_confined
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.safe_fs import Beneath, UnsafePath, split_name
from dockyard.agent.images.unpack import BoundedTarInfo, _HashingReader, open_layer
from dockyard.agent.images.unpack_limits import UnpackLimits
from dockyard.agent.runtime.base import InvalidConfig
from dockyard.agent.runtime.runc.spec import resolve_user

__all__ = ["CopyPlan", "copy_into", "resolve_owner"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TAR_MAGIC_OFFSET = 257


@dataclass(frozen=True)
class CopyPlan:
    """One COPY/ADD: what, where (absolute, in the image), as whom."""

    context: Path
    sources: Sequence[Source]
    dest: str
    dest_is_dir: bool
    owner: tuple[int, int] | None
    extract_archives: bool = False


def _read_etc(root_fd: int, name: str) -> str:
    try:
        with Beneath(root_fd).directory(("etc",)) as etc:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc)
            with os.fdopen(fd, "rb") as f:
                return f.read(1 << 20).decode(errors="replace")
    except (OSError, UnsafePath):
        return ""


def resolve_owner(rootfs: Path, chown: str) -> tuple[int, int]:
    """``--chown=user[:group]`` against the image's /etc/passwd and /etc/group.

    Raises:
        ContextError: a name the image does not know.
    """
    user, _, group = chown.partition(":")
    root_fd = os.open(rootfs, _DIR_FLAGS)
    try:
        passwd, groups = _read_etc(root_fd, "passwd"), _read_etc(root_fd, "group")
    finally:
        os.close(root_fd)
    try:
        resolved = resolve_user(chown, passwd, groups)
    except InvalidConfig as exc:
        raise ContextError(f"--chown={chown}: {exc}") from None
    if not group and user.isascii() and user.isdigit():
        return resolved.uid, resolved.uid  # Docker: a bare uid is also the gid
    return resolved.uid, resolved.gid


def is_dir_in(rootfs: Path, path: str) -> bool:
    """Whether ``path`` (resolved: ``in_root``) is a directory in the root filesystem."""
    parts = split_name(path.strip("/")) if path.strip("/") else ()
    root_fd = os.open(rootfs, _DIR_FLAGS)
    try:
        with Beneath(root_fd).directory(parts):
            return True
    except UnsafePath:
        return False
    finally:
        os.close(root_fd)


def _is_archive(fd: int) -> bool:
    head = os.pread(fd, 512, 0)
    if head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd":
        return True
    return head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar"


def _unpack_at(tar_path: Path, root_fd: int, parts: tuple[str, ...]) -> None:
    with Beneath(root_fd).directory(parts, create=True) as target:
        budget = UnpackLimits().budget(target)
        with open_layer(tar_path) as stream:
            reader = _HashingReader(stream, budget, tar_path.name)
            with tarfile.open(
                fileobj=cast(IO[bytes], reader), mode="r|", tarinfo=BoundedTarInfo
            ) as tar:
                run_confined(target, TarUnpacker(tar, Beneath(target), budget, "copy").run)


def _write_sources(plan: CopyPlan, writer: TreeTar) -> list[Path]:
    """Every source of ``plan`` into the writer's tar; returns the local archives that
    ADD unpacks instead (Docker's ADD of a local tar)."""
    dest_parts = split_name(plan.dest.strip("/")) if plan.dest.strip("/") else ()
    archives: list[Path] = []
    for source in plan.sources:
        with opened(plan.context, source.parts) as (parent, name):
            if source.is_dir:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                try:
                    writer.contents(fd)
                finally:
                    os.close(fd)
                continue
            base = source.parts[-1]
            regular = stat.S_ISREG(os.lstat(name, dir_fd=parent).st_mode)
            if plan.extract_archives and plan.dest_is_dir and regular:  # never a fifo
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode) and _is_archive(fd):
                        archives.append(plan.context.joinpath(*source.parts))
                        continue
                finally:
                    os.close(fd)
            if not plan.dest_is_dir and not dest_parts:
                raise ContextError("cannot copy a file over the root directory")
            writer.add(parent, name, base if plan.dest_is_dir else dest_parts[-1])
    return archives


def copy_into(plan: CopyPlan, rootfs: Path, scratch: Path) -> None:
    """Carry out ``plan`` into the mounted ``rootfs``; ``scratch`` holds the tar.

    Raises:
        ContextError: a source or destination refused (naming it).
    """
    dest_parts = split_name(plan.dest.strip("/")) if plan.dest.strip("/") else ()
    tar_path = scratch / "copy.tar"
    with (
        tar_path.open("wb") as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        try:
            archives = _write_sources(plan, TreeTar(tar, owner=plan.owner or (0, 0), xattrs=True))
        except UnsafePath as exc:  # a source tree deeper than the image store unpacks
            raise ContextError(f"cannot copy to {plan.dest}: {exc}") from None
    root_fd = os.open(rootfs, _DIR_FLAGS)
    try:
        target = dest_parts if plan.dest_is_dir else dest_parts[:-1]
        _unpack_at(tar_path, root_fd, target)
        for archive in archives:
            _unpack_at(archive, root_fd, dest_parts)
    except (LayerError, UnsafePath, tarfile.TarError, EOFError, ValueError) as exc:
        raise ContextError(f"cannot copy to {plan.dest}: {exc}") from None
    finally:
        os.close(root_fd)
