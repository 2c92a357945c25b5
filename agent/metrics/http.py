"""The agent's metrics endpoint: `GET /metrics` over HTTPS with client certificates.

Security matches the agent's gRPC API: the TLS handshake requires a certificate from the
cluster CA (the agent's node certificate serves), and then `admin`, `read-only` and
`controller` identities may scrape; `node` identities (other agents) and revoked
certificates get 403. Under `--insecure` it is plain HTTP, as the API is. `/healthz`
answers any certificate of the cluster. Nothing here writes."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from cryptography import x509

from dockyard.agent.metrics.exposition import AgentMetrics
from dockyard.common import pki

__all__ = ["SCRAPERS", "MetricsServer", "ReloadingTLS", "peer_identity", "server_tls"]

log = structlog.get_logger(__name__)

SCRAPERS = frozenset({pki.ADMIN, pki.READ_ONLY, pki.CONTROLLER})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReloadingTLS:
    """The server's TLS context; the certificate is loaded again when its file changes
    (the agent renews its node certificate in place), for the connections after that."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self._cert, self._key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cafile=str(ca))
        self._loaded = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Load the certificate again when it changed since the last load (blocking)."""
        mtime = self._cert.stat().st_mtime
        if mtime != self._loaded:
            self.context.load_cert_chain(self._cert, self._key)
            self._loaded = mtime


def server_tls(cert: Path, key: Path, ca: Path) -> ReloadingTLS:
    """HTTPS that requires a client certificate signed by the cluster CA."""
    return ReloadingTLS(cert, key, ca)


@functools.lru_cache(maxsize=256)
def _identity_from_der(der: bytes) -> pki.Identity | None:
    try:
        return pki.identity_of(x509.load_der_x509_certificate(der))
    except (pki.PKIError, ValueError):
        return None


def peer_identity(request: web.Request) -> pki.Identity | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return _identity_from_der(der) if der else None


class MetricsServer:
    """Serves `/metrics` (and `/healthz`) on `listen`, HTTPS when `tls` is given.

    Args:
        listen: host:port (port 0 picks one; `address` says which after `start`).
        metrics: Renders the exposition.
        tls: The server's TLS (None: plain HTTP, for --insecure only).
        revoked: Whether a certificate serial (hex) is revoked.
    """

    def __init__(
        self,
        listen: str,
        metrics: AgentMetrics,
        tls: ReloadingTLS | None,
        revoked: Callable[[str], bool] = lambda serial: False,
    ) -> None:
        self._listen = listen
        self._metrics = metrics
        self._tls = tls
        self._revoked = revoked
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        """Listen; return the address bound. OSError when it cannot be bound."""
        app = web.Application(middlewares=[self._authorize])
        app.router.add_get("/metrics", self._scrape, name="metrics")
        app.router.add_get("/healthz", self._healthz, name="healthz")
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        host, _, port = self._listen.rpartition(":")
        site = web.TCPSite(
            runner,
            host.strip("[]"),
            int(port),
            reuse_address=True,
            ssl_context=self._tls.context if self._tls else None,
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.address = f"{host}:{runner.addresses[0][1]}"
        scheme = "https" if self._tls is not None else "http"
        log.info("metrics.started", url=f"{scheme}://{self.address}/metrics")
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._tls is not None and request.match_info.route.name != "healthz":
            identity = peer_identity(request)
            reason = (
                "a client certificate from this cluster's CA is required"
                if identity is None
                else f"certificate {identity.serial} is revoked"
                if self._revoked(identity.serial)
                else f"{identity.role} {identity.id!r} may not read this agent's metrics"
                if identity.role not in SCRAPERS
                else ""
            )
            if reason:
                log.warning("metrics.refused", reason=reason, remote=request.remote)
                return web.Response(status=403, text=reason + "\n")
        return await handler(request)

    async def _scrape(self, request: web.Request) -> web.Response:
        if self._tls is not None:  # a renewed certificate serves the next connections
            await asyncio.to_thread(self._tls.refresh)
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body, content_type = await self._metrics.render(openmetrics)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
