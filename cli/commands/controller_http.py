"""GET a JSON answer from the controller's HTTP side, with the CLI's own TLS identity.

The controller says where its HTTP side listens (GetInfo's `http_address`); the CLI
dials it with the target's CA, certificate and key, as `dockyard events` does."""

from __future__ import annotations

import json
import ssl
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import quote

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.events import http_endpoint
from dockyard.cli.commands.service_wait import control_stub

__all__ = ["ControllerHttp", "path_of"]

TIMEOUT = 30.0
MAX_BODY = 64 * 1024 * 1024


def path_of(*parts: str) -> str:
    """`/v1/services/web%2Fx/stats`: every part quoted."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


class ControllerHttp:
    """One controller's HTTP side; the address is asked once, at the first request."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._where: tuple[str, int] | None = None

    def _endpoint(self) -> tuple[str, int]:
        if self._where is None:
            from dockyard.v1.control_pb2 import GetInfoRequest

            info = call(self._target, control_stub, "GetInfo", GetInfoRequest())
            self._where = http_endpoint(self._target, info.http_address)
        return self._where

    def _connection(self, host: str, port: int) -> HTTPConnection:
        tls = self._target.tls
        if tls is None:
            return HTTPConnection(host, port, timeout=TIMEOUT)
        context = ssl.create_default_context(cafile=tls.ca)
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot read TLS material: {exc}") from exc
        return HTTPSConnection(host, port, timeout=TIMEOUT, context=context)

    def get(self, path: str) -> Any:
        """The decoded answer of `GET path`; a CliError with the controller's message
        when it is not 200."""
        host, port = self._endpoint()
        connection = self._connection(host, port)
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read(MAX_BODY)
        except (OSError, HTTPException, ssl.SSLError) as exc:
            raise CliError(f"{path} from {host}:{port}: {exc}") from exc
        finally:
            connection.close()
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise CliError(f"{path} from {host}:{port}: not JSON (HTTP {response.status})") from exc
        if response.status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise CliError(f"{path}: {message or f'HTTP {response.status}'}")
        return data
