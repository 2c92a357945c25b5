"""Blocking requests to etcd's HTTP/JSON gateway (etcd 3.4's `/v3/...` on the client
port), with the standard library only: the lease keeper's renewals and key check.

A blocking gRPC call from a thread of a busy Python process is several threads (the
request iterator's, the channel's, a deadline watcher) each waiting for the GIL: under
load its answer came 170 ms (p50) to 1 s (p99) after etcd sent it, where one HTTP
request on a kept connection, read on the calling thread alone, took a few ms
(docs/reliability.md, "Keep-alives over etcd's HTTP gateway"). Socket timeouts are
relative (poll), so the deadlines here follow the monotonic clock, not the wall clock.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from dockyard.controller.records import StoreUnavailable


class GatewayClient:
    """One kept HTTP(S) connection per etcd endpoint; each request tries the endpoints
    in order, starting from the last that answered, within the caller's deadline."""

    def __init__(
        self,
        endpoints: Sequence[str],
        credentials: dict[str, bytes | None],
        tls_server_name: str | None,
    ) -> None:
        self._endpoints = [_host_port(endpoint) for endpoint in endpoints]
        self._context = _tls_context(credentials)
        self._tls_server_name = tls_server_name
        self._connections: dict[int, http.client.HTTPConnection] = {}
        self._index = 0

    def keep_alive(self, lease_id: int, timeout: float) -> bool:
        """Renew the lease once; False when etcd says it is gone (no TTL in the answer).
        Raises StoreUnavailable when no endpoint answered within `timeout` seconds."""
        reply = self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, timeout)
        result = reply.get("result")
        if not isinstance(result, dict):
            raise StoreUnavailable(f"etcd lease keep-alive: {_error(reply)}")
        return int(result.get("TTL", 0)) > 0

    def create_revision(self, key: str, timeout: float) -> int | None:
        """The key's create revision (a linearizable read), None when it is absent."""
        body = {"key": base64.b64encode(key.encode()).decode()}
        reply = self._post("/v3/kv/range", body, timeout)
        kvs = reply.get("kvs") or []
        return int(kvs[0].get("create_revision", 0)) if kvs else None

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        for step in range(len(self._endpoints)):
            index = (self._index + step) % len(self._endpoints)
            try:
                reply = self._exchange(index, path, body, deadline)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop(index)
                errors.append(f"{self._endpoints[index][0]}:{self._endpoints[index][1]}: {exc!r}")
                if time.monotonic() >= deadline:
                    break
                continue
            self._index = index
            return reply
        self._index += 1
        raise StoreUnavailable(f"etcd gateway {path}: {'; '.join(errors)}")

    def _exchange(
        self, index: int, path: str, body: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """One request and its answer on endpoint `index`'s connection; a kept connection
        the server has closed meanwhile is opened again once."""
        payload = json.dumps(body).encode()
        reused = index in self._connections
        try:
            return self._request(self._connection(index, deadline), path, payload, deadline)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self._drop(index)
            return self._request(self._connection(index, deadline), path, payload, deadline)

    def _request(
        self,
        connection: http.client.HTTPConnection,
        path: str,
        payload: bytes,
        deadline: float,
    ) -> dict[str, Any]:
        _set_timeout(connection, deadline)
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        _set_timeout(connection, deadline)
        response = connection.getresponse()
        data = response.read()
        if time.monotonic() > deadline:
            raise TimeoutError("answered after the deadline")
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}: {data[:200]!r}")
        # A streaming call (the keep-alive) answers one JSON object a line.
        reply = json.loads(data.splitlines()[0] if data else b"{}")
        if not isinstance(reply, dict):
            raise ValueError(f"unexpected answer {data[:200]!r}")
        return reply

    def _connection(self, index: int, deadline: float) -> http.client.HTTPConnection:
        connection = self._connections.get(index)
        if connection is None:
            host, port = self._endpoints[index]
            timeout = _left(deadline)
            if self._context is None:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            else:
                connection = _HTTPSConnection(
                    host, port, self._context, self._tls_server_name or host, timeout
                )
            connection.connect()
            self._connections[index] = connection
        return connection

    def _drop(self, index: int) -> None:
        connection = self._connections.pop(index, None)
        if connection is not None:
            connection.close()


class _HTTPSConnection(http.client.HTTPConnection):
    """HTTPS with the certificate checked against `server_name` (gRPC's
    ssl_target_name_override), not the host dialled."""

    default_port = 443

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._server_name = server_name

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name)


def _set_timeout(connection: http.client.HTTPConnection, deadline: float) -> None:
    left = _left(deadline)
    connection.timeout = left
    if connection.sock is not None:
        connection.sock.settimeout(left)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _tls_context(credentials: dict[str, bytes | None]) -> ssl.SSLContext | None:
    ca_cert = credentials.get("ca_cert")
    if ca_cert is None:
        return None
    context = ssl.create_default_context(cadata=ca_cert.decode())
    key, chain = credentials.get("cert_key"), credentials.get("cert_chain")
    if key is not None and chain is not None:
        # ssl loads a client certificate from files only: a private directory, gone
        # once loaded.
        with tempfile.TemporaryDirectory(prefix="dockyard-gateway-") as folder:
            chain_path, key_path = os.path.join(folder, "chain"), os.path.join(folder, "key")
            for path, data in ((chain_path, chain), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
            context.load_cert_chain(chain_path, key_path)
    return context


def _host_port(endpoint: str) -> tuple[str, int]:
    address = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _error(reply: dict[str, Any]) -> str:
    error = reply.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return f"unexpected answer {reply!r}"[:200]


__all__ = ["GatewayClient"]
