"""``GET|HEAD|PUT /containers/{id}/archive``: ``docker cp`` out of and into a container.

Both ways go through the container's root filesystem as the agent sees it (the runc
runtime's overlay mount; an exited container's is mounted for the copy and unmounted
after). Every name is resolved beneath that root with no symlink followed and no ``..``
(``images/safe_fs.py``): a path through a symlink in the container (``/var/run`` on
many images) is refused with 400 naming it, never followed out of the container.
Uploads are unpacked by the image layers' unpacker (``images/unpack.py``) in a thread
chrooted to the target directory, within its size and entry limits; downloads are
bounded by :data:`MAX_ARCHIVE_BYTES`. Volumes and tmpfs mounted in the container are
not part of its root filesystem and are not reached (docs/docker-api.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import posixpath
import queue
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any, cast

import structlog
from aiohttp import web

from dockyard.agent.build.tree_tar import TreeTar
from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, not_found
from dockyard.agent.dockerapi.lookup import check_not_task, find_container
from dockyard.agent.images.confine import run_confined
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.safe_fs import Beneath, UnsafePath, split_name
from dockyard.agent.images.unpack import BoundedTarInfo, _HashingReader, _Unpacker
from dockyard.agent.images.unpack_limits import UnpackLimits
from dockyard.common.threads import to_thread_to_end

__all__ = ["MAX_ARCHIVE_BYTES", "add_routes"]

log = structlog.get_logger(__name__)

MAX_ARCHIVE_BYTES = 8 * 1024**3
"""The most file bytes one download carries."""
MAX_ARCHIVE_ENTRIES = 1_000_000
CHUNK = 256 * 1024
STAT_HEADER = "X-Docker-Container-Path-Stat"
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Target:
    parent: tuple[str, ...]
    name: str  # "" for the root itself


def _target(path: str) -> _Target:
    if not path:
        raise bad_request("path: a path in the container is required")
    try:
        parts = split_name(posixpath.normpath("/" + path).lstrip("/"))
    except UnsafePath as exc:
        raise bad_request(f"path: {exc}") from None
    if not parts:
        return _Target((), "")
    return _Target(parts[:-1], parts[-1])


def _go_mode(mode: int) -> int:
    """A stat mode as Go's ``os.FileMode`` (what the docker CLI decodes)."""
    bits = mode & 0o777
    if stat.S_ISDIR(mode):
        bits |= _GO_DIR
    elif stat.S_ISLNK(mode):
        bits |= _GO_SYMLINK
    return bits


def _path_stat(root_fd: int, target: _Target) -> dict[str, Any]:
    """The header the docker CLI reads first (blocking)."""
    fs = Beneath(root_fd)
    with fs.directory(target.parent) as parent:
        name = target.name or "."
        found = os.lstat(name, dir_fd=parent) if target.name else os.fstat(parent)
        link = os.readlink(name, dir_fd=parent) if stat.S_ISLNK(found.st_mode) else ""
    return {
        "name": target.name or "/",
        "size": found.st_size,
        "mode": _go_mode(found.st_mode),
        "mtime": _go_time(found.st_mtime),
        "linkTarget": link,
    }


def _go_time(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Budget:
    def __init__(self) -> None:
        self.bytes = 0
        self.entries = 0

    def spend(self, size: int) -> None:
        self.bytes += size
        self.entries += 1
        if self.bytes > MAX_ARCHIVE_BYTES or self.entries > MAX_ARCHIVE_ENTRIES:
            raise UnsafePath(
                f"the copy is larger than {MAX_ARCHIVE_BYTES} bytes or "
                f"{MAX_ARCHIVE_ENTRIES} entries"
            )


class _QueueWriter:
    """A file tarfile writes to; the chunks go to the event loop through a bounded queue."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self._chunks.put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._chunks.put(bytes(self._buffer))
            self._buffer.clear()


def _write_tar(root_fd: int, target: _Target, chunks: queue.Queue[bytes | None]) -> None:
    writer = _QueueWriter(chunks)
    try:
        with (
            Beneath(root_fd).directory(target.parent) as parent,
            tarfile.open(
                fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT
            ) as tar,
        ):
            tree = TreeTar(tar, spend=_Budget().spend)
            if target.name:
                tree.add(parent, target.name, target.name)
            else:
                tree.contents(parent)
        writer.flush()
    finally:
        chunks.put(None)


class _Rootfs:
    """The container's root filesystem, held mounted for the copy (the runc runtime's
    count of its holders: a start or an exit meanwhile does not unmount it from under
    the copy, nor the copy from under a container started meanwhile)."""

    def __init__(self, view: ContainerView, ctx: DockerApiContext) -> None:
        from dockyard.agent.runtime.runc.runtime import RuncRuntime

        runtime = ctx.containers.runtime if ctx.containers is not None else None
        if ctx.runtime != "runc" or not isinstance(runtime, RuncRuntime):
            raise DockerApiError(
                501, f"docker cp is not supported by dockyard's {ctx.runtime} runtime"
            )
        self.runtime = runtime
        self.view = view

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[int]:
        # Both ends run to completion when the handler is cancelled: aiohttp cancels it
        # when docker cp hangs up, right after reading the archive.
        async with self.runtime.rootfs(self.view.info.id) as target:
            fd = await to_thread_to_end(lambda: os.open(target, _DIR_FLAGS), os.close)
            try:
                yield fd
            finally:
                os.close(fd)


def _stat_header(info: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(info).encode()).decode()


async def _head_or_get(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    target = _target(request.query.get("path", ""))
    view = await find_container(ctx, ref)
    async with _Rootfs(view, ctx).open() as root_fd:
        try:
            path_stat = await asyncio.to_thread(_path_stat, root_fd, target)
        except (FileNotFoundError, UnsafePath) as exc:
            if isinstance(exc, UnsafePath) and "does not exist" not in str(exc):
                raise bad_request(f"path {request.query['path']!r}: {exc}") from None
            raise not_found(
                f"Could not find the file {request.query['path']} in container {ref}"
            ) from None
        headers = {STAT_HEADER: _stat_header(path_stat), "Content-Type": "application/x-tar"}
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        writer = asyncio.create_task(asyncio.to_thread(_write_tar, root_fd, target, chunks))
        try:
            while (chunk := await asyncio.to_thread(chunks.get)) is not None:
                await response.write(chunk)
            await writer  # its error, if any, ends the stream early (the client sees it)
        except BaseException:
            while not writer.done():  # unblock the thread: drain what it still puts
                with contextlib.suppress(queue.Empty):
                    await asyncio.to_thread(chunks.get, timeout=0.1)
            with contextlib.suppress(BaseException):
                await writer
            raise
        await response.write_eof()
        return response


class _StreamReader:
    """The request body as a blocking file, read by the unpacking thread."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self._content = request.content
        self._loop = loop

    def read(self, size: int = -1) -> bytes:
        count = CHUNK if size is None or size < 0 else size
        future = asyncio.run_coroutine_threadsafe(self._content.read(count), self._loop)
        return future.result()


class _ArchiveUnpacker(_Unpacker):
    """The layer unpacker, but an upload's ``.wh.`` names are files, not whiteouts: they
    are refused rather than deleting what they name."""

    def whiteout(self, parent: int, target: str, name: str) -> None:
        raise UnsafePath(f"{name!r}: names starting with .wh. are not copied")


def _unpack(root_fd: int, parts: tuple[str, ...], body: _StreamReader) -> None:
    """Unpack the uploaded tar into the directory `parts` beneath the root (blocking)."""
    with Beneath(root_fd).directory(parts) as target_fd:
        budget = UnpackLimits().budget(target_fd)
        reader = _HashingReader(cast(IO[bytes], body), budget, "upload")
        with tarfile.open(
            fileobj=cast(IO[bytes], reader), mode="r|", tarinfo=BoundedTarInfo
        ) as tar:
            unpacker = _ArchiveUnpacker(tar, Beneath(target_fd), budget, "upload")
            run_confined(target_fd, unpacker.run)


async def _put(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    ref = request.match_info["id"]
    path = request.query.get("path", "")
    target = _target(path)
    view = await find_container(ctx, ref)
    check_not_task(view, "copy into")
    if view.info.config.read_only:
        raise DockerApiError(403, f"container {view.info.name}'s root filesystem is read-only")
    parts = (*target.parent, target.name) if target.name else ()
    body = _StreamReader(request, asyncio.get_running_loop())
    async with _Rootfs(view, ctx).open() as root_fd:
        try:
            await asyncio.to_thread(_unpack, root_fd, parts, body)
        except UnsafePath as exc:
            if "does not exist" in str(exc):
                raise not_found(f"Could not find the file {path} in container {ref}") from None
            raise bad_request(f"path {path!r}: {exc}") from None
        except (LayerError, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise bad_request(f"cannot extract the archive into {path}: {exc}") from None
    log.info("dockerapi.archive_copied_in", container_id=view.info.id, path=path)
    return web.Response(status=200)


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """``docker cp``."""

    @routes.get("/containers/{id}/archive")  # HEAD too
    async def get_archive(request: web.Request) -> web.StreamResponse:
        return await _head_or_get(ctx, request)

    @routes.put("/containers/{id}/archive")
    async def put_archive(request: web.Request) -> web.StreamResponse:
        return await _put(ctx, request)
