"""The JSON list reads of the HTTP side (`GET /v1/nodes`, `GET /v1/services`) on a
port of the reader process's own (`--read-http-listen`), answered from its view's
snapshots, so that a dashboard or a monitoring poller reads without touching the
leader's event loop.

The same JSON, pages (`?page_size=`, `X-Next-Page-Token`) and errors as the
controller's HTTP side (controller/http/reads.py is both sides' code), the same TLS
(HTTPS requiring a client certificate of the cluster CA) and roles (admin, read-only
and controller certificates; revoked ones get 403). `/healthz` answers any cluster
certificate. A read waits for the controller's own last write as the gRPC read port
does (ReadServer.current).

aiohttp serves it on an event loop of its own, on a thread of its own (not the
reader's loop, which applies the watch); the reads run on WORKERS threads, and calls
beyond MAX_CONCURRENT_CALLS in progress get 503 at once (no queue grows), as on the
gRPC read port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web
from google.protobuf.message import Message

from dockyard.common.validation import ValidationError
from dockyard.controller.errors import details_for
from dockyard.controller.http.reads import (
    ApiError,
    error_response,
    nodes_query,
    nodes_records,
    paged,
    services_query,
    services_records,
    to_json,
)
from dockyard.controller.http.server import authorize, common_headers, peer_identity
from dockyard.controller.read_server import (
    MAX_CONCURRENT_CALLS,
    WORKERS,
    ReadServer,
    ReadUnavailable,
    slow_read,
)
from dockyard.controller.snapshot import ReadSnapshot, list_nodes, list_services

__all__ = ["ReadHttpServer"]

log = structlog.get_logger(__name__)

# Seconds the port has to bind, and to close on stop.
BIND_TIMEOUT = 10.0

Answer = Callable[[ReadSnapshot], tuple[list[Message], str]]


class ReadHttpServer:
    """Serves the nodes and services JSON reads from `reads`' snapshots.

    Args:
        reads: the gRPC read port's server (its `current` snapshot is answered from).
        revoked: whether a certificate serial (hex) is revoked.
        tls: HTTPS requiring a client certificate (None: plain HTTP, --insecure).
    """

    def __init__(
        self, reads: ReadServer, revoked: Callable[[str], bool], tls: ssl.SSLContext | None
    ) -> None:
        self._reads = reads
        self._revoked = revoked
        self._tls = tls
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="read-http")
        self._calls = 0  # in progress (touched on the server's own loop only)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self, address: str) -> int:
        """Listen on `address` (blocking until bound); the bound port, 0 when it cannot
        be bound."""
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(address, bound)),
            name="read-http",
            daemon=True,
        )
        thread.start()
        try:
            port = bound.result(BIND_TIMEOUT)
        except concurrent.futures.TimeoutError:
            port = 0
        if port:
            self._thread = thread
        return port

    def stop(self, grace: float) -> None:
        """Stop serving (blocking, at most about `grace` seconds)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        self._thread = None
        if thread is not None and loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
            thread.join(grace + BIND_TIMEOUT)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, address: str, bound: concurrent.futures.Future[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/healthz", self._healthz, name="healthz")
        app.router.add_get("/v1/nodes", self._nodes, name="nodes")
        app.router.add_get("/v1/services", self._services, name="services")
        app.on_response_prepare.append(common_headers)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        host, _, port = address.rpartition(":")
        site = web.TCPSite(
            runner, host.strip("[]"), int(port), ssl_context=self._tls, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            log.error("read_http.cannot_listen", address=address, error=str(exc))
            await runner.cleanup()
            bound.set_result(0)
            return
        port_bound = int(runner.addresses[0][1])
        log.info(
            "read_http.listening",
            address=address,
            port=port_bound,
            client_certificates="required" if self._tls is not None else "none",
        )
        bound.set_result(port_bound)
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Authorize as the HTTP side does; errors as its JSON errors."""
        route = request.match_info.route.name or "unmatched"
        try:
            if self._tls is not None:
                authorize(peer_identity(request), route, self._revoked)
            return await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, str(exc), exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: no such path, method not allowed
            message = (
                "this port serves GET /v1/nodes and /v1/services only"
                if exc.status in (404, 405)
                else exc.reason
            )
            response = error_response(exc.status, "NOT_FOUND", message)
        log.warning(
            "read_http.request", method=request.method, path=request.path, status=response.status
        )
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _nodes(self, request: web.Request) -> web.Response:
        query = nodes_query(request)

        def answer(snapshot: ReadSnapshot) -> tuple[list[Message], str]:
            # Persisted heartbeats, as on the gRPC read port: the live ones are the leader's.
            listed = list_nodes(snapshot, query, lambda node: node)
            return list(nodes_records(query, listed)), listed.next_page_token

        return await self._read("ListNodes", answer)

    async def _services(self, request: web.Request) -> web.Response:
        query = services_query(request)

        def answer(snapshot: ReadSnapshot) -> tuple[list[Message], str]:
            listed = list_services(snapshot, query)
            return list(services_records(query, listed)), listed.next_page_token

        return await self._read("ListServices", answer)

    async def _read(self, method: str, answer: Answer) -> web.Response:
        if self._calls >= MAX_CONCURRENT_CALLS:
            raise ApiError(
                503,
                "RESOURCE_EXHAUSTED",
                f"too many reads in progress (at most {MAX_CONCURRENT_CALLS}); retry later",
                headers={"Retry-After": "1"},
            )
        self._calls += 1
        try:
            loop = asyncio.get_running_loop()
            body, token = await loop.run_in_executor(self._pool, self._answer, method, answer)
        finally:
            self._calls -= 1
        return paged(web.Response(body=body, content_type="application/json"), token)

    def _answer(self, method: str, answer: Answer) -> tuple[bytes, str]:
        """On a read thread: the snapshot, the listing and its JSON."""
        started = time.perf_counter()
        try:
            snapshot, from_etcd = self._reads.current()
        except ReadUnavailable as exc:
            raise ApiError(503, "UNAVAILABLE", str(exc)) from exc
        fresh = time.perf_counter()
        try:
            records, token = answer(snapshot)
            return to_json(records), token
        except ValidationError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", details_for(exc)) from exc
        finally:
            slow_read(f"http {method}", started, fresh, from_etcd)
