"""The `Images` gRPC service: pull and push with progress, list, rm, tag, load/save."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from dockyard.agent.containers.convert import image_record, image_summary
from dockyard.agent.containers.errors import InvalidArgument, NotFound
from dockyard.agent.containers.request import parse_image_ref
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.containers.status import Context, streaming, unary
from dockyard.agent.images.errors import ImageNotFound, ImageStoreError
from dockyard.agent.images.models import Image
from dockyard.agent.images.progress import (
    ProgressCallback,
    ProgressEvent,
    QueuedProgress,
    Status,
)
from dockyard.agent.images.service import ImageService
from dockyard.v1 import images_pb2 as pb
from dockyard.v1 import images_pb2_grpc

__all__ = ["PROGRESS_INTERVAL", "ImagesServicer"]

PROGRESS_INTERVAL = 0.1
"""At most one byte-count event per layer per this many seconds; state changes always pass."""

_BYTES = (Status.DOWNLOADING, Status.UPLOADING)
# What reading an archive's JSON raises where it has other fields or types than it should.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _progress_message(event: ProgressEvent) -> pb.ImageProgress:
    return pb.ImageProgress(
        id=event.id, status=event.status.value, current=event.current, total=event.total
    )


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    """The node's images; removals through the container service (which knows which
    containers use them)."""

    def __init__(self, images: ImageService, containers: ContainerService) -> None:
        self._manager = containers
        self._images = images

    async def _record(self, image: Image) -> pb.ImageRecord:
        config = await self._images.store.blobs.read(image.config_digest)
        return image_record(image, config.decode(errors="replace"))

    async def _transfer(
        self, work: Callable[[ProgressCallback], Coroutine[Any, Any, Image]], label: str
    ) -> AsyncIterator[pb.ImageProgress]:
        progress = QueuedProgress(PROGRESS_INTERVAL, _BYTES)
        task = asyncio.create_task(work(progress))
        try:
            while not task.done():
                getter = asyncio.create_task(progress.queue.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield _progress_message(getter.result())
                else:
                    getter.cancel()
            while not progress.queue.empty():
                yield _progress_message(progress.queue.get_nowait())
            image = task.result()
            yield pb.ImageProgress(
                id=label, status="done", done=True, image=await self._record(image)
            )
        finally:
            if not task.done():  # the client went away: stop the transfer
                task.cancel()
                await asyncio.wait([task])

    @streaming
    async def Pull(
        self, request: pb.PullImageRequest, context: Context
    ) -> AsyncIterator[pb.ImageProgress]:
        ref = parse_image_ref("image", request.image)
        async for message in self._transfer(lambda cb: self._images.pull(ref, cb), str(ref)):
            yield message

    @streaming
    async def Push(
        self, request: pb.PushImageRequest, context: Context
    ) -> AsyncIterator[pb.ImageProgress]:
        ref = parse_image_ref("image", request.image)
        try:
            image = self._images.resolve(ref)
        except ImageNotFound:
            raise NotFound(f"image {ref} not found on this node") from None

        async def push(callback: ProgressCallback) -> Image:
            digest = await self._images.push(ref, callback)
            return self._images.store.get(digest) if digest == image.digest else image

        async for message in self._transfer(push, str(ref)):
            yield message

    @unary
    async def List(self, request: pb.ListImagesRequest, context: Context) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[image_summary(r) for r in self._images.list()])

    def _resolve(self, field: str, text: str) -> Image:
        if not text:
            raise InvalidArgument(field, "an image reference or ID is required")
        try:
            return self._images.resolve(text)
        except ImageNotFound:
            raise NotFound(f"image {text} not found on this node") from None
        except ValueError as exc:
            raise InvalidArgument(field, str(exc)) from None

    @unary
    async def Inspect(self, request: pb.ImageRef, context: Context) -> pb.ImageRecord:
        return await self._record(self._resolve("image", request.image))

    @unary
    async def Remove(
        self, request: pb.RemoveImageRequest, context: Context
    ) -> pb.RemoveImageResponse:
        lines = await self._manager.remove_image(request.image, request.force)
        return pb.RemoveImageResponse(
            untagged=[
                line.removeprefix("Untagged: ") for line in lines if line.startswith("Untagged: ")
            ],
            deleted=[
                line.removeprefix("Deleted: ") for line in lines if line.startswith("Deleted: ")
            ],
        )

    @unary
    async def Tag(self, request: pb.TagImageRequest, context: Context) -> pb.ImageRecord:
        image = self._resolve("source", request.source)
        target = parse_image_ref("target", request.target)
        if target.digest:
            raise InvalidArgument("target", "a tag target cannot carry a digest")
        await self._images.tag(image.digest, target)
        return await self._record(self._images.store.get(image.digest))

    @unary
    async def Load(self, request: pb.LoadImagesRequest, context: Context) -> pb.LoadImagesResponse:
        path = _absolute("path", request.path)
        with _file_errors("path", path, (ImageStoreError, OSError, *_MALFORMED)):
            images = await self._images.load(path)
        return pb.LoadImagesResponse(images=[await self._record(i) for i in images])

    @unary
    async def Save(self, request: pb.SaveImagesRequest, context: Context) -> pb.SaveImagesResponse:
        if not request.images:
            raise InvalidArgument("images", "at least one image is required")
        for index, text in enumerate(request.images):
            self._resolve(f"images[{index}]", text)
        path = _absolute("path", request.path)
        with _file_errors("path", path, (OSError,)):
            await self._images.save(list(request.images), path)
        size = (await asyncio.to_thread(path.stat)).st_size
        return pb.SaveImagesResponse(size=size)

    @unary
    async def Import(self, request: pb.ImportImageRequest, context: Context) -> pb.ImageRecord:
        path = _absolute("path", request.path)
        ref = parse_image_ref("reference", request.reference)
        with _file_errors("path", path, (ImageStoreError, OSError)):
            image = await self._images.import_rootfs(path, ref)
        return await self._record(image)


def _absolute(field: str, text: str) -> Path:
    if not text.startswith("/"):
        raise InvalidArgument(field, f"must be an absolute path on the agent's host, got {text!r}")
    if "\0" in text:
        raise InvalidArgument(field, f"must not contain a NUL character, got {text!r}")
    return Path(text)


@contextlib.contextmanager
def _file_errors(field: str, path: Path, kinds: tuple[type[Exception], ...]) -> Iterator[None]:
    """What goes wrong with the file a request names is the request's error (a missing
    file, a directory, a file that is no image archive or an unsafe tarball)."""
    try:
        yield
    except kinds as exc:
        if FileNotFoundError in (type(exc), type(exc.__cause__)):
            raise NotFound(f"{field}: no such file or directory: {str(path)!r}") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, _MALFORMED):
            reason = f"not a valid image archive ({type(exc).__name__}: {exc})"
        raise InvalidArgument(field, f"{str(path)!r}: {reason}") from exc
