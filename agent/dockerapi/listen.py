"""Where the Docker API listens, and who may use it.

- A unix socket (default ``/run/dockyard/docker.sock``), mode 0660 and owned by the
  group ``--docker-api-group`` (default ``docker``, when the host has it): as with
  dockerd, whoever can open the socket controls the node (root-equivalent), so the
  filesystem's permissions are the authorisation. A socket another live process still
  serves is left alone (the API is then not served on it: a warning,
  ``dockerapi.socket_in_use``); a stale one is replaced. Stopping removes it.
- TCP (``--docker-api-listen HOST:PORT``) with the cluster's mutual TLS: the server's
  certificate is the node's, and a client needs a certificate the cluster CA signed
  with the ``admin`` role (Docker's ``--tlsverify`` with ``DOCKER_CERT_PATH`` holding
  ``ca.pem``, ``cert.pem``, ``key.pem``: ``dockyard context export --docker DIR``).
  Other roles (``read-only``, ``node``, ``controller``) and revoked certificates get
  403: the Docker API has no read-only subset worth the name (logs, archives and
  inspect expose secrets), and it is root on the node. Plain TCP only with
  ``--docker-api-insecure`` (anyone who reaches the port controls the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from dockyard.agent.dockerapi.server import error_response
from dockyard.agent.metrics.http import ReloadingTLS, peer_identity
from dockyard.common import pki

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_SOCKET",
    "DockerApiListenError",
    "DockerApiServer",
    "ListenConfig",
]

log = structlog.get_logger(__name__)

DEFAULT_SOCKET = Path("/run/dockyard/docker.sock")
DEFAULT_GROUP = "docker"
USERS = frozenset({pki.ADMIN})
"""Roles whose certificates may use the API over TCP."""
TLS_REFRESH_SECONDS = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DockerApiListenError(Exception):
    """The API cannot listen as configured (the message says which flag)."""


@dataclass(frozen=True)
class ListenConfig:
    """Where to serve.

    Attributes:
        socket: The unix socket's path (None: none).
        group: The socket's group; "" keeps the agent's. The default group missing on
            the host is no error (root only then); a named one missing is.
        group_required: Whether `group` was asked for explicitly.
        tcp: ``host:port`` for TCP ("" none).
        insecure: TCP without TLS.
    """

    socket: Path | None = DEFAULT_SOCKET
    group: str = DEFAULT_GROUP
    group_required: bool = False
    tcp: str = ""
    insecure: bool = False


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def _prepare_socket(path: Path) -> bool:
    """Make way for the socket: False when another live process serves it (blocking)."""
    if path.is_socket():
        if _socket_alive(path):
            return False
        path.unlink()  # stale: its server is gone
    elif path.exists():
        raise DockerApiListenError(f"--docker-api-socket {path}: exists and is not a socket")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    return True


def _secure_socket(path: Path, gid: int | None) -> tuple[int, int]:
    """Mode 0660 and the group; the socket's identity, to remove only this one (blocking)."""
    os.chmod(path, 0o660)
    if gid is not None:
        os.chown(path, -1, gid)
    status = path.stat()
    return status.st_dev, status.st_ino


def _group_id(name: str, required: bool) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if required:
            raise DockerApiListenError(
                f"--docker-api-group {name}: no such group on this host"
            ) from None
        return None


class DockerApiServer:
    """The Docker API app served on a unix socket and/or TCP.

    Args:
        app: From ``server.build_app``.
        config: Where.
        tls: The node's TLS (required for TCP unless ``config.insecure``).
        revoked: Whether a certificate serial (hex) is revoked.
    """

    def __init__(
        self,
        app: web.Application,
        config: ListenConfig,
        tls: ReloadingTLS | None = None,
        revoked: Callable[[str], bool] = lambda serial: False,
    ) -> None:
        self._app = app
        self._config = config
        self._tls = tls
        self._revoked = revoked
        self._runner: web.AppRunner | None = None
        self._socket_inode: tuple[int, int] | None = None
        self.socket_path: Path | None = None
        self.tcp_address = ""
        if config.tcp and not config.insecure and tls is None:
            raise DockerApiListenError(
                "--docker-api-listen needs the node's certificate (join the cluster), or "
                "--docker-api-insecure for plain, unauthenticated TCP"
            )
        if config.tcp and not config.insecure:
            app.middlewares.insert(0, self._authorize)

    async def start(self) -> None:
        """Listen (DockerApiListenError when it cannot)."""
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            # a client gone mid-stream (`logs -f` of a quiet container, `wait`) ends its
            # handler instead of leaving it waiting for the container
            handler_cancellation=True,
        )
        await runner.setup()
        self._runner = runner
        try:
            if self._config.socket is not None:
                await self._start_unix(runner, self._config.socket)
            if self._config.tcp:
                await self._start_tcp(runner, self._config.tcp)
        except BaseException:
            await self.stop()
            raise

    async def _start_unix(self, runner: web.AppRunner, path: Path) -> None:
        gid = _group_id(self._config.group, self._config.group_required)
        try:
            if not await asyncio.to_thread(_prepare_socket, path):
                log.warning(
                    "dockerapi.socket_in_use",
                    socket=str(path),
                    message="another process serves this socket: the Docker API is not "
                    "served on it (give --docker-api-socket)",
                )
                return
            site = web.UnixSite(runner, str(path))
            await site.start()
            self._socket_inode = await asyncio.to_thread(_secure_socket, path, gid)
        except OSError as exc:
            raise DockerApiListenError(
                f"--docker-api-socket {path}: {exc.strerror or exc}"
            ) from exc
        self.socket_path = path
        log.info("dockerapi.listening", socket=str(path), group=self._config.group if gid else "")

    async def _start_tcp(self, runner: web.AppRunner, address: str) -> None:
        host, _, port = address.rpartition(":")
        tls = None if self._config.insecure else self._tls
        site = web.TCPSite(
            runner,
            host.strip("[]"),
            int(port),
            reuse_address=True,
            ssl_context=tls.context if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise DockerApiListenError(
                f"--docker-api-listen {address}: {exc.strerror or exc}"
            ) from exc
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        self.tcp_address = f"{host}:{bound[-1][1]}" if bound else address
        if tls is None:
            log.warning(
                "dockerapi.INSECURE",
                address=self.tcp_address,
                message="--docker-api-insecure: the Docker API is PLAINTEXT and "
                "UNAUTHENTICATED on this address; anyone who reaches it controls this host",
            )
        else:
            log.info("dockerapi.listening", address=self.tcp_address, tls=True)

    async def refresh_tls(self) -> None:
        """Reload the node's certificate when renewed (runs in the agent's task group)."""
        while self._tls is not None:
            await asyncio.sleep(TLS_REFRESH_SECONDS)
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(self._tls.refresh)

    async def stop(self) -> None:
        """Close the listeners (and their connections) and remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        path = self.socket_path
        if path is not None and self._socket_inode is not None:
            with contextlib.suppress(OSError):
                status = path.lstat()
                if stat.S_ISSOCK(status.st_mode) and (status.st_dev, status.st_ino) == (
                    self._socket_inode
                ):
                    path.unlink()
            self.socket_path = None

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Over TLS: an admin certificate of the cluster, not revoked (the socket's
        connections have no peer certificate and are not checked here)."""
        transport = request.transport
        if transport is None or transport.get_extra_info("ssl_object") is None:
            return await handler(request)
        identity = peer_identity(request)
        reason = (
            "a client certificate from this cluster's CA is required"
            if identity is None
            else f"certificate {identity.serial} is revoked"
            if self._revoked(identity.serial)
            else f"{identity.role} {identity.id!r} may not use this agent's Docker API "
            "(it needs an admin certificate)"
            if identity.role not in USERS
            else ""
        )
        if reason:
            log.warning("dockerapi.refused", reason=reason, remote=request.remote)
            return error_response(403, reason)
        return await handler(request)
