"""`/images/...`: pull and push with dockerd's progress stream, list, inspect, history,
tag, remove, save (`docker save`), load, prune; over the node's `ImageService`.

A pull answers a normal HTTP error when it fails before anything was sent (no such
image, bad credentials), as dockerd does; once the stream has started, a failure is its
last line (`errorDetail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.containers.errors import ApiError
from dockyard.agent.dockerapi import image_view
from dockyard.agent.dockerapi.context import DockerApiContext, with_context
from dockyard.agent.dockerapi.errors import (
    DockerApiError,
    bad_request,
    from_api_error,
    not_found,
    not_implemented,
)
from dockyard.agent.dockerapi.events import event_bus
from dockyard.agent.dockerapi.filters import parse_filters, query_bool, registry_auth
from dockyard.agent.dockerapi.pull_progress import (
    PullRenderer,
    PushRenderer,
    error_line,
    line,
    pull_footer,
    pull_header,
    push_footer,
    push_header,
)
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.images.errors import (
    ImageError,
    ImageNotFound,
    ImageStoreError,
    InvalidReference,
    ManifestNotFound,
    RegistryAuthError,
)
from dockyard.agent.images.models import Image
from dockyard.agent.images.progress import (
    ProgressCallback,
    ProgressEvent,
    QueuedProgress,
    Status,
)
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.auth import Credentials

__all__ = ["PROGRESS_INTERVAL", "add_routes"]

log = structlog.get_logger(__name__)

PROGRESS_INTERVAL = 0.1
"""At most one byte-count line per layer per this many seconds (state changes always)."""
_CHUNK = 256 * 1024
_RESERVE = 64 * 1024 * 1024
"""Space an upload leaves free on the agent's disk."""
_BYTES = (Status.DOWNLOADING, Status.UPLOADING, Status.EXTRACTING)
# What reading an archive's JSON raises where it has other fields or types than it should.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _parse_ref(text: str) -> Reference:
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        raise bad_request(str(exc)) from None


def _pull_ref(from_image: str, tag: str) -> Reference:
    """`fromImage` and `tag` as the CLI sends them (`busybox` + `latest`, a digest as
    `tag`, or everything in `fromImage`)."""
    if not from_image:
        raise bad_request("fromImage: an image name is required (fromSrc imports are not served)")
    if tag.startswith("sha256:"):
        return _parse_ref(f"{from_image}@{tag}")
    if tag:
        return _parse_ref(f"{from_image}:{tag}")
    return _parse_ref(from_image)


def _image(images: ImageService, name: str) -> Image:
    try:
        return image_view.find_image(images.store, name)
    except ImageNotFound:
        raise not_found(f"No such image: {name}") from None
    except ImageStoreError as exc:  # an ambiguous id
        raise bad_request(str(exc)) from None


def _credentials(request: web.Request, ref: Reference) -> dict[str, Credentials] | None:
    credentials = registry_auth(request.headers.get("X-Registry-Auth"))
    return {ref.registry: credentials} if credentials is not None else None


async def _run_with_progress(
    work: Callable[[ProgressCallback], Coroutine[Any, Any, Any]],
) -> AsyncIterator[ProgressEvent | _Done]:
    """The work's progress events as they come, then `_Done` with its result; the work
    is cancelled when the consumer stops early (the client went away)."""
    progress = QueuedProgress(PROGRESS_INTERVAL, _BYTES)
    task = asyncio.ensure_future(work(progress))
    try:
        while not task.done():
            getter = asyncio.ensure_future(progress.queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not progress.queue.empty():
            yield progress.queue.get_nowait()
        yield _Done(task.result())
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])


class _Done:
    def __init__(self, result: Any) -> None:
        self.result = result


def _stream_response() -> web.StreamResponse:
    return web.StreamResponse(status=200, headers={"Content-Type": "application/json"})


def _pull_error(ref: Reference, exc: Exception) -> DockerApiError:
    if isinstance(exc, ManifestNotFound):
        return not_found(f"manifest for {ref.familiar()} not found: manifest unknown: {exc}")
    if isinstance(exc, RegistryAuthError):
        return DockerApiError(
            401,
            f"pull access denied for {ref.familiar_name()}, repository does not exist or "
            f"may require 'docker login': {exc}",
        )
    return DockerApiError(500, str(exc))


def _publish(ctx: DockerApiContext, action: str, actor: str, **attributes: str) -> None:
    bus = event_bus(ctx)
    if bus is not None:
        bus.publish("image", action, actor, attributes)


async def _pull(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    if request.query.get("fromSrc"):
        raise not_implemented("POST /images/create?fromSrc (docker import) is not supported")
    ref = _pull_ref(request.query.get("fromImage", ""), request.query.get("tag", ""))
    credentials = _credentials(request, ref)
    try:
        had: str | None = images.store.resolve(ref).digest
    except ImageNotFound:
        had = None
    renderer = PullRenderer()
    response: web.StreamResponse | None = None

    async def start() -> web.StreamResponse:
        stream = _stream_response()
        await stream.prepare(request)
        await stream.write(line(pull_header(ref)))
        return stream

    try:
        async for item in _run_with_progress(
            lambda cb: images.pull(ref, cb, credentials=credentials)
        ):
            if isinstance(item, _Done):
                image: Image = item.result
                response = response or await start()
                for message in pull_footer(ref, image, had):
                    await response.write(line(message))
                _publish(ctx, "pull", ref.familiar(), name=ref.familiar())
                log.info("dockerapi.pulled", ref=str(ref), digest=image.digest)
                break
            response = response or await start()
            for message in renderer.render(item):
                await response.write(line(message))
    except (ImageError, OSError) as exc:
        log.info("dockerapi.pull_failed", ref=str(ref), error=str(exc))
        if response is None:
            raise _pull_error(ref, exc) from None
        await response.write(error_line(str(exc)))
    assert response is not None
    await response.write_eof()
    return response


async def _push(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    name = request.match_info["name"]
    tag = request.query.get("tag", "")
    ref = _parse_ref(f"{name}:{tag}" if tag else name)
    try:
        image = images.store.resolve(ref)
    except ImageNotFound:
        raise not_found(f"An image does not exist locally with the tag: {name}") from None
    credentials = _credentials(request, ref)
    response = _stream_response()
    await response.prepare(request)
    await response.write(line(push_header(ref)))
    renderer = PushRenderer()
    try:
        async for item in _run_with_progress(
            lambda cb: images.push(ref, cb, credentials=credentials)
        ):
            if isinstance(item, _Done):
                digest = str(item.result)
                size = images.store.blobs.size(digest) if images.store.blobs.has(digest) else 0
                for message in push_footer(ref, digest, size):
                    await response.write(line(message))
                _publish(ctx, "push", ref.familiar(), name=ref.familiar())
                break
            for message in renderer.render(item):
                await response.write(line(message))
    except (ImageError, OSError) as exc:
        log.info("dockerapi.push_failed", ref=str(ref), image=image.id, error=str(exc))
        await response.write(error_line(str(exc)))
    await response.write_eof()
    return response


async def _list_images(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    filters = parse_filters(request.query.get("filters"))
    if "filter" in request.query:  # API < 1.41: a reference glob of its own
        filters.setdefault("reference", []).append(request.query["filter"])
    try:
        wanted = image_view.ImageFilters(filters)
        found = [i for i in images.store.images() if wanted.matches(i, images.store)]
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    except ImageNotFound as exc:  # before= / since= naming no image
        raise not_found(str(exc)) from None
    rows = [image_view.summary(i) for i in found]
    rows.sort(key=lambda r: (r["Created"], r["Id"]), reverse=True)
    return json_response(rows)


async def _inspect(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    image = _image(images, request.match_info["name"])
    config = await images.store.blobs.read(image.config_digest)
    return json_response(image_view.inspect(image, config))


async def _history(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    image = _image(images, request.match_info["name"])
    config = await images.store.blobs.read(image.config_digest)
    return json_response(image_view.history(image, config))


async def _tag(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    image = _image(images, request.match_info["name"])
    repo = request.query.get("repo", "")
    if not repo:
        raise bad_request("repo: a repository name is required")
    wanted = request.query.get("tag", "")
    target = _parse_ref(f"{repo}:{wanted}" if wanted else repo)
    if target.digest:
        raise bad_request("refusing to create a tag with a digest reference")
    await images.tag(image.digest, target)
    _publish(ctx, "tag", image.id, name=target.familiar())
    return web.Response(status=201)


async def _remove(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    name = request.match_info["name"]
    force = query_bool(request.query.get("force"))
    image = _image(images, name)
    # A name the store knows as a reference untags; anything else names the image.
    target = name if _names_reference(images, name, image) else image.id
    try:
        if ctx.containers is not None:
            lines = await ctx.containers.remove_image(target, force)
        else:
            lines = await images.remove(target, force)
    except ApiError as exc:
        raise from_api_error(exc, f"No such image: {name}") from None
    except ImageError as exc:  # several repositories without force
        raise DockerApiError(409, str(exc)) from None
    rows = []
    for text in lines:
        kind, _, value = text.partition(": ")
        rows.append({kind: value})
        _publish(ctx, "untag" if kind == "Untagged" else "delete", image.id, name=value)
    return json_response(rows)


async def _save_many(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    names = request.query.getall("names", [])
    if not names:
        raise bad_request("names: at least one image is required")
    return await _save(request, ctx, names)


async def _save_one(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    return await _save(request, ctx, [request.match_info["name"]])


async def _load(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    # `quiet` only hides dockerd's progress bars (none here): the lines stay, as there.
    with _scratch(ctx) as directory:
        path = directory / "upload.tar"
        await _receive(request, path)
        try:
            loaded = await images.load(path)
        except (ImageStoreError, OSError, *_MALFORMED) as exc:
            reason = str(exc)
            if isinstance(exc, _MALFORMED):
                reason = f"not a valid image archive ({type(exc).__name__}: {exc})"
            raise bad_request(f"the uploaded archive: {reason}") from None
    response = _stream_response()
    await response.prepare(request)
    for image in loaded:
        tags = image_view.repo_tags(image)
        for text in tags or [f"ID: {image.id}"]:
            label = f"Loaded image: {text}" if tags else f"Loaded image {text}"
            _publish(ctx, "load", image.id, name=text)
            await response.write(line({"stream": label + "\n"}))
    await response.write_eof()
    return response


async def _prune(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    filters = parse_filters(request.query.get("filters"))
    dangling_only = True
    for value in filters.pop("dangling", []):
        dangling_only = query_bool(value, True)
    label_filters = filters.pop("label", [])
    if filters:
        raise bad_request(f"invalid filter '{sorted(filters)[0]}'")
    wanted = image_view.ImageFilters({"label": label_filters})
    used = await _used_digests(ctx)
    before = _blob_bytes(images)
    rows: list[dict[str, str]] = []
    for image in images.store.images():
        if image.digest in used or not wanted.matches(image, images.store):
            continue
        if dangling_only and image_view.repo_tags(image):
            continue
        for name in await images.store.delete(image.digest):
            rows.append({"Untagged": parse_reference(name).familiar()})
        rows.append({"Deleted": image.id})
        _publish(ctx, "delete", image.id, name=image.id)
    await images.gc()
    reclaimed = max(0, before - _blob_bytes(images))
    return json_response({"ImagesDeleted": rows or None, "SpaceReclaimed": reclaimed})


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The image endpoints."""
    routes.post("/images/create")(with_context(ctx, _pull))
    routes.post("/images/{name:.+}/push")(with_context(ctx, _push))
    routes.get("/images/json")(with_context(ctx, _list_images))
    routes.get("/images/{name:.+}/json")(with_context(ctx, _inspect))
    routes.get("/images/{name:.+}/history")(with_context(ctx, _history))
    routes.post("/images/{name:.+}/tag")(with_context(ctx, _tag))
    routes.delete("/images/{name:.+}")(with_context(ctx, _remove))
    routes.get("/images/get")(with_context(ctx, _save_many))
    routes.get("/images/{name:.+}/get")(with_context(ctx, _save_one))
    routes.post("/images/load")(with_context(ctx, _load))
    routes.post("/images/prune")(with_context(ctx, _prune))


def _names_reference(images: ImageService, name: str, image: Image) -> bool:
    try:
        ref = parse_reference(name)
    except InvalidReference:
        return False
    return str(ref) in image.references


async def _used_digests(ctx: DockerApiContext) -> set[str]:
    if ctx.containers is None:
        return set()
    return {view.meta.image_digest for view in await ctx.containers.list(all=True)}


def _blob_bytes(images: ImageService) -> int:
    blobs = images.store.blobs
    return sum(blobs.size(d) for d in blobs.digests())


@contextlib.contextmanager
def _scratch(ctx: DockerApiContext) -> Iterator[Path]:
    """A private temporary directory on the agent's state filesystem."""
    root = ctx.state_dir / "tmp"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="dockerapi-", dir=root))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _receive(request: web.Request, path: Path) -> None:
    """The request body into `path`, refused (413) when it would leave the disk nearly
    full; nothing is kept on failure (the caller's scratch directory goes)."""
    free = (await asyncio.to_thread(shutil.disk_usage, path.parent)).free
    budget = max(0, free - _RESERVE)
    if request.content_length is not None and request.content_length > budget:
        raise DockerApiError(
            413, f"the upload ({request.content_length} bytes) does not fit on the agent's disk"
        )
    written = 0
    with await asyncio.to_thread(path.open, "wb") as out:
        async for chunk in request.content.iter_chunked(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise DockerApiError(
                    413, f"the upload is larger than the agent's free disk ({budget} bytes)"
                )
            await asyncio.to_thread(out.write, chunk)


async def _save(
    request: web.Request, ctx: DockerApiContext, names: list[str]
) -> web.StreamResponse:
    """`docker save`: a tarball `docker load` reads (docker's manifest.json and an OCI
    layout over the same blobs), written to scratch and streamed."""
    images = ctx.require_images()
    refs = []
    for name in names:
        image = _image(images, name)
        refs.append(name if _names_reference(images, name, image) else image.digest)
    with _scratch(ctx) as directory:
        path = directory / "save.tar"
        await images.save(refs, path)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-tar"})
        response.content_length = (await asyncio.to_thread(path.stat)).st_size
        await response.prepare(request)
        with await asyncio.to_thread(path.open, "rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                await response.write(chunk)
        await response.write_eof()
    return response
