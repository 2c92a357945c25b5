"""The controller's HTTP(S) server, on the controller's own event loop (aiohttp).

Security matches the gRPC port: unless the controller runs with --insecure,
this is HTTPS with the controller's server certificate, and the TLS handshake
requires a client certificate from the cluster CA (ssl.CERT_REQUIRED: no
certificate, another CA's or an expired one never gets to HTTP). Then:

- `admin`, `read-only` and `controller` certificates may read everything;
- `node` certificates get 403, and so does a revoked certificate (the CA's
  revocation list, which every controller watches);
- `/healthz` answers any certificate of the cluster (it still needs one: the
  whole port requires client certificates, as the gRPC port does).

Nothing here writes: every route is a GET.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from cryptography import x509

from dockyard.common import pki
from dockyard.controller.ca import pki_dir
from dockyard.controller.config import ControllerConfig
from dockyard.controller.errors import details_for, status_for
from dockyard.controller.http.metrics import ControllerMetrics
from dockyard.controller.http.reads import ApiError, error_response
from dockyard.controller.http.routes import Handlers, ReadSources

log = structlog.get_logger(__name__)

__all__ = [
    "HttpListenError",
    "HttpServer",
    "ReadSources",
    "authorize",
    "common_headers",
    "peer_identity",
    "server_tls",
    "start_http",
]

READERS = frozenset({pki.ADMIN, pki.READ_ONLY, pki.CONTROLLER})
PUBLIC_ROUTES = frozenset({"healthz"})  # any certificate of the cluster, any role
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "UNAVAILABLE": 503,
}
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 400: "INVALID_ARGUMENT"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_tls(cert_file: Path, key_file: Path, ca_pem: bytes) -> ssl.SSLContext:
    """HTTPS that requires a client certificate signed by the cluster CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cadata=ca_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@functools.lru_cache(maxsize=1024)
def _identity_from_der(der: bytes) -> pki.Identity | None:
    try:
        return pki.identity_of(x509.load_der_x509_certificate(der))
    except (pki.PKIError, ValueError):
        return None


def peer_identity(request: web.Request) -> pki.Identity | None:
    """The identity in the client's verified certificate (None without TLS)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return _identity_from_der(der) if der else None


class HttpListenError(Exception):
    """The --http-listen address given cannot be bound."""


async def start_http(
    config: ControllerConfig,
    sources: ReadSources,
    metrics: ControllerMetrics,
    ca_pem: bytes | None,
) -> HttpServer | None:
    """Serve the HTTP side as `config` says: HTTPS with client certificates when the
    controller has a CA (`ca_pem`), plain HTTP under --insecure, nothing when
    `http_listen` is empty. An address that cannot be bound is an HttpListenError."""
    if not config.http_listen:
        return None
    tls = None
    if ca_pem is not None:
        directory = pki_dir(config.state_dir)
        tls = await asyncio.to_thread(
            server_tls, directory / "controller.pem", directory / "controller-key.pem", ca_pem
        )
    server = HttpServer(
        config.http_listen, sources, metrics, tls=tls, max_streams=config.http_max_streams
    )
    try:
        await server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HttpListenError(
            f"cannot listen on {config.http_listen} (--http-listen): {reason}; give another "
            'address, or --http-listen "" to turn the HTTP side off'
        ) from exc
    if tls is None:
        log.warning(
            "controller.INSECURE",
            message=f"--insecure: the HTTP API on {server.address} is PLAINTEXT and "
            "UNAUTHENTICATED; anyone who reaches this port reads the whole cluster",
        )
    return server


class HttpServer:
    """Serves the routes of `Handlers` on `listen` (HTTPS when `tls` is given)."""

    def __init__(
        self,
        listen: str,
        sources: ReadSources,
        metrics: ControllerMetrics,
        *,
        tls: ssl.SSLContext | None,
        max_streams: int = 64,
    ) -> None:
        self._listen = listen
        self._sources = sources
        self._metrics = metrics
        self._tls = tls
        self.handlers = Handlers(sources, metrics, max_streams=max_streams)
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        """Listen; return the address bound. OSError when the address cannot be bound."""
        await self.handlers.load_static()
        app = web.Application(middlewares=[self._middleware])
        self.handlers.add_to(app)
        app.on_response_prepare.append(common_headers)
        # handler_cancellation: a client that goes away ends its handler at once (an
        # event stream frees its slot without waiting for its next write).
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            handler_cancellation=True,
        )
        await runner.setup()
        host, _, port = self._listen.rpartition(":")
        site = web.TCPSite(
            runner, host.strip("[]"), int(port), ssl_context=self._tls, reuse_address=True
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.address = f"{host}:{bound[1]}"
        scheme = "https" if self._tls is not None else "http"
        log.info(
            "http.started",
            url=f"{scheme}://{self.address}/",
            client_certificates="required" if self._tls is not None else "none",
        )
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authorize, answer errors as JSON, log and count every request."""
        start = time.perf_counter()
        route = request.match_info.route.name or "unmatched"
        identity = peer_identity(request)
        request["identity"] = identity
        try:
            if self._tls is not None:
                authorize(identity, route, self._sources.revoked)
            response = await handler(request)
        except asyncio.CancelledError:  # the client went away (or the server stops)
            log.debug(
                "http.request",
                method=request.method,
                path=request.path,
                status=499,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
                peer=_peer_name(identity),
                remote=request.remote,
            )
            raise
        except ApiError as exc:
            response = error_response(exc.status, exc.code, str(exc), exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: no such path, method not allowed
            message = (
                "this API is read-only: only GET"
                if exc.status == 405
                else f"no route {request.path[:200]!r}"
                if exc.status == 404
                else exc.reason
            )
            response = error_response(exc.status, HTTP_CODES.get(exc.status, "UNKNOWN"), message)
        except Exception as exc:
            if "stream" in request:  # the event stream had started: nothing left to say
                log.exception("http.stream_failed", path=request.path)
                response = request["stream"]
            else:
                response = _error_for(exc, request)
        status = response.status
        seconds = time.perf_counter() - start
        self._metrics.http_requests.labels(route, str(status)).inc()
        if "stream" not in request:  # a stream lasts as long as its client stays
            self._metrics.http_latency.labels(route).observe(seconds)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "peer": _peer_name(identity),
            "remote": request.remote,
        }
        if status >= 400:
            log.warning("http.request", **fields)
        else:
            log.debug("http.request", **fields)
        return response


def authorize(identity: pki.Identity | None, route: str, revoked: Callable[[str], bool]) -> None:
    """The HTTP side's roles (TLS only): an ApiError unless `identity` may read `route`
    (also the reader process's HTTP port's check, controller/read_http.py)."""
    if route in PUBLIC_ROUTES:
        return
    if identity is None:  # not reached with CERT_REQUIRED; kept as a second lock
        raise ApiError(
            401, "UNAUTHENTICATED", "a client certificate from this cluster's CA is required"
        )
    if revoked(identity.serial):
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"certificate {identity.serial} ({identity.role} {identity.id}) is revoked",
        )
    if identity.role not in READERS:
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"{identity.role} {identity.id!r} may not read the cluster API",
        )


def _peer_name(identity: pki.Identity | None) -> str:
    return f"{identity.role}:{identity.id}" if identity else "anonymous"


def _error_for(exc: Exception, request: web.Request) -> web.Response:
    code = status_for(exc)
    if code is None:
        log.exception("http.unhandled_error", path=request.path)
        return error_response(500, "INTERNAL", f"internal error: {details_for(exc)}")
    return error_response(HTTP_STATUS.get(code.name, 500), code.name, details_for(exc))


async def common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "dockyard-controller"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
