"""The Docker Engine API's application: middlewares, and the routes of every module.

Adding endpoints
----------------
One module per area (``system.py``, ``containers.py``, ...) defines

.. code-block:: python

    def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
        @routes.get("/containers/{id}/json")
        async def inspect(request: web.Request) -> web.StreamResponse: ...

with paths WITHOUT the ``/v1.NN`` prefix (the version middleware strips it) and
handlers that close over ``ctx`` (or read ``request.app[CONTEXT]``). Register the module
with one line in :data:`ROUTE_MODULES` below; nothing else changes. Handlers raise
``errors.DockerApiError`` (``not_found``, ``conflict``, ...) and never format errors
themselves. The API version a client asked for is ``request[API_VERSION_KEY]``.
A module that works in the background while the app serves (``networks.py`` keeps the
DNS names of its containers) also defines ``lifespan(ctx)``, an aiohttp cleanup context.

What every request gets
-----------------------
- ``/vX.Y/...`` is served as ``/...`` for ``MIN_API_VERSION <= X.Y <= API_VERSION``; a
  newer version is Docker's 400 (``client version X.Y is too new``), an older one too.
- Any route no module serves answers 501 ``{"message": "<METHOD> <path> is not
  supported by dockyard"}``.
- ``DockerApiError`` becomes its status and ``{"message": ...}``; any other exception is
  logged (``dockerapi.failed``) and answered 500 with its text: never a traceback.
- Every response carries ``Api-Version``, ``Docker-Experimental``, ``Ostype`` and
  ``Server`` headers, as dockerd's do.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Final

import structlog
from aiohttp import web
from yarl import URL

from dockyard.agent.dockerapi import (
    archive,
    attach,
    build,
    commit,
    container_observe,
    containers,
    disk_usage,
    images,
    networks,
    system,
    volumes,
)
from dockyard.agent.dockerapi import events as docker_events
from dockyard.agent.dockerapi import exec as exec_routes
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.dockerapi.versions import API_VERSION, MIN_API_VERSION, parse_version
from dockyard.common.version import package_version

__all__ = [
    "API_VERSION",
    "API_VERSION_KEY",
    "CONTEXT",
    "MIN_API_VERSION",
    "ROUTE_MODULES",
    "build_app",
]

log = structlog.get_logger(__name__)

ROUTE_MODULES: tuple[ModuleType, ...] = (
    system,
    containers,
    container_observe,
    archive,
    images,
    volumes,
    docker_events,
    networks,
    disk_usage,
    attach,
    exec_routes,
    commit,
    build,
    # one line per module, each with `add_routes(routes, ctx)`
)

CONTEXT: Final = web.AppKey("dockyard_docker_api_context", DockerApiContext)
"""The app's `DockerApiContext` (``request.app[CONTEXT]``)."""
API_VERSION_KEY: Final = "docker_api_version"
"""``request[API_VERSION_KEY]``: the version the client asked for, as ``(major, minor)``."""

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""Largest JSON request body read whole (a create body with many env entries fits); tar
uploads are streamed and bounded by their handlers."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERSIONED = re.compile(r"^/v(\d{1,3})\.(\d{1,3})(/.*)$")


_MAX = parse_version(API_VERSION)
_MIN = parse_version(MIN_API_VERSION)


def error_response(status: int, message: str) -> web.Response:
    """Docker's error body."""
    return json_response({"message": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Docker's `{"message": ...}` for every failure; never a traceback to the client."""
    try:
        return await handler(request)
    except DockerApiError as exc:
        log.debug("dockerapi.error", method=request.method, path=request.path, status=exc.status)
        return error_response(exc.status, exc.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):  # no route: handlers raise ours
        log.info("dockerapi.unsupported", method=request.method, path=request.path)
        return error_response(501, f"{request.method} {request.path} is not supported by dockyard")
    except web.HTTPException as exc:  # aiohttp's own (a body too large, a bad request line)
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.text or exc.reason)
    except ConnectionResetError:  # the client went away: nobody to answer
        log.debug("dockerapi.client_gone", method=request.method, path=request.path)
        raise
    except Exception as exc:
        log.error("dockerapi.failed", method=request.method, path=request.path, exc_info=exc)
        return error_response(500, f"{type(exc).__name__}: {exc}")


@web.middleware
async def _versions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve `/vX.Y/path` as `/path` (aiohttp routes before middlewares run, so the
    stripped path is resolved again here and its handler called)."""
    match = _VERSIONED.match(request.rel_url.raw_path)
    if match is None:
        request[API_VERSION_KEY] = _MAX
        return await handler(request)
    version = (int(match[1]), int(match[2]))
    shown = f"{match[1]}.{match[2]}"
    if version > _MAX:
        raise DockerApiError(
            400,
            f"client version {shown} is too new. Maximum supported API version is {API_VERSION}",
        )
    if version < _MIN:
        raise DockerApiError(
            400,
            f"client version {shown} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version",
        )
    url = URL.build(path=match[3], query_string=request.rel_url.raw_query_string, encoded=True)
    inner = request.clone(rel_url=url)
    resolved = await request.app.router.resolve(inner)
    resolved.add_app(request.app)
    resolved.freeze()
    inner._match_info = resolved  # what aiohttp's own dispatch sets
    inner[API_VERSION_KEY] = version
    return await resolved.handler(inner)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Api-Version"] = API_VERSION
    response.headers["Docker-Experimental"] = "false"
    response.headers["Ostype"] = "linux"
    response.headers["Server"] = f"Dockyard/{package_version()} (linux)"


def build_app(ctx: DockerApiContext) -> web.Application:
    """The Docker API over the node's services in `ctx`."""
    app = web.Application(middlewares=[_errors, _versions], client_max_size=MAX_BODY_BYTES)
    app[CONTEXT] = ctx
    routes = web.RouteTableDef()
    for module in ROUTE_MODULES:
        module.add_routes(routes, ctx)
    app.add_routes(routes)
    for module in ROUTE_MODULES:  # background work a module runs while the app serves
        lifespan = getattr(module, "lifespan", None)
        if lifespan is not None:
            app.cleanup_ctx.append(lifespan(ctx))
    app.on_response_prepare.append(_headers)
    return app
