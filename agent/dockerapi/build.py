"""``POST /build``: the legacy builder's API (``DOCKER_BUILDKIT=0 docker build``, Docker's
SDK ``images.build``, docker-compose 1.29 ``build:``), over ``build/builder.py``.

The body (a tar of the context, plain or gzip) is streamed to the agent's state dir
within its free space (as ``docker load``), unpacked safely (``build/context.py``), and
built; the answer is dockerd's JSON stream (``Step 1/4 : ...``, `` ---> <id>``, RUN's
output, ``aux`` with the image id, ``Successfully built``/``tagged``), a failure its
last line ``{"errorDetail": ..., "error": ...}``. The build's scratch directory, its
containers and mounts are gone when the request ends, also when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.build.builder import (
    Builder,
    BuildFailed,
    BuildOptions,
    recover,
    remove_scratch,
    scratch_dir,
)
from dockyard.agent.build.cache import BuildCache
from dockyard.agent.build.context import ContextError, unpack_into
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request
from dockyard.agent.dockerapi.filters import query_bool
from dockyard.agent.dockerapi.images import _receive
from dockyard.agent.dockerapi.pull_progress import error_line, line
from dockyard.agent.images.errors import InvalidReference
from dockyard.agent.images.reference import Reference, parse_reference

__all__ = ["add_routes", "lifespan", "parse_options"]

log = structlog.get_logger(__name__)

MAX_TAGS = 64
MAX_ARGS = 1024


def _json_map(request: web.Request, name: str) -> dict[str, str]:
    text = request.query.get(name, "")
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise bad_request(f"{name}: not a JSON object") from None
    if not isinstance(raw, dict) or len(raw) > MAX_ARGS:
        raise bad_request(f"{name}: expected a JSON object of at most {MAX_ARGS} keys")
    return {str(k): str(v) for k, v in raw.items() if v is not None}


def _tags(request: web.Request) -> list[Reference]:
    texts = [t for t in request.query.getall("t", []) if t]
    if len(texts) > MAX_TAGS:
        raise bad_request(f"t: at most {MAX_TAGS} tags")
    try:
        refs = [parse_reference(t) for t in texts]
    except InvalidReference as exc:
        raise bad_request(f"invalid tag: {exc}") from None
    if any(r.digest is not None for r in refs):
        raise bad_request("t: a tag cannot be a digest")
    return refs


def _network(mode: str) -> str:
    if mode in ("", "default", "bridge"):
        return "bridge"
    if mode in ("none", "host"):
        return mode  # host: the agent's privilege policy decides
    raise bad_request(f"networkmode: {mode!r} is not supported by dockyard (bridge, host, none)")


def parse_options(request: web.Request) -> BuildOptions:
    """The query of ``POST /build``; 400 naming a malformed parameter."""
    if request.query.get("remote"):
        raise DockerApiError(501, "remote build contexts are not supported by dockyard")
    return BuildOptions(
        dockerfile=request.query.get("dockerfile", "") or "Dockerfile",
        tags=_tags(request),
        build_args=_json_map(request, "buildargs"),
        labels=_json_map(request, "labels"),
        quiet=query_bool(request.query.get("q")),
        target=request.query.get("target", ""),
        no_cache=query_bool(request.query.get("nocache")),
        network=_network(request.query.get("networkmode", "")),
        pull=query_bool(request.query.get("pull")),
    )


async def _build(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    containers = ctx.require_containers()
    if ctx.runtime != "runc":
        raise DockerApiError(501, f"docker build is not supported by dockyard's {ctx.runtime}")
    options = parse_options(request)
    scratch = await asyncio.to_thread(scratch_dir, ctx.state_dir / "tmp")
    try:
        upload = scratch / "context.tar"
        limit = images.store.limits.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise DockerApiError(413, f"the build context is larger than {limit} bytes")
        await _receive(request, upload)
        context = scratch / "context"
        await asyncio.to_thread(context.mkdir, 0o755)
        try:
            await asyncio.to_thread(unpack_into, upload, context, images.store.limits)
        except ContextError as exc:
            raise bad_request(f"the build context: {exc}") from None
        await asyncio.to_thread(upload.unlink)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def emit(message: dict[str, Any]) -> None:
            await response.write(line(message))

        cache = BuildCache(ctx.state_dir / "build-cache.json")
        builder = Builder(images, containers, ctx.admission, scratch, emit, cache)
        try:
            image = await builder.build(context, options)
        except BuildFailed as exc:
            log.info("dockerapi.build_failed", error=str(exc))
            await response.write(error_line(str(exc)))
        except Exception as exc:  # the stream has started: an error line, not a 500
            log.exception("dockerapi.build_error")
            await response.write(error_line(f"the build failed: {exc}"))
        else:
            await emit({"aux": {"ID": image.id}})
            if options.quiet:
                await emit({"stream": f"{image.id}\n"})
            else:
                await emit({"stream": f"Successfully built {image.id[7:19]}\n"})
                for ref in options.tags:
                    await emit({"stream": f"Successfully tagged {ref.familiar()}\n"})
            log.info("dockerapi.built", image=image.id, tags=[str(t) for t in options.tags])
        await response.write_eof()
        return response
    finally:
        await asyncio.shield(asyncio.to_thread(remove_scratch, scratch))


def lifespan(
    ctx: DockerApiContext,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """At start: what builds of an agent that died mid-build left is removed."""

    @contextlib.asynccontextmanager
    async def clean(app: web.Application) -> AsyncIterator[None]:
        if ctx.containers is not None and ctx.images is not None and ctx.runtime == "runc":
            try:
                await recover(ctx.state_dir / "tmp", ctx.containers)
            except Exception as exc:
                log.error("dockerapi.build_recovery_failed", error=str(exc))
        yield

    return clean


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """``docker build``."""

    @routes.post("/build")
    async def build(request: web.Request) -> web.StreamResponse:
        return await _build(request, ctx)
