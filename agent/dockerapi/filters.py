"""Docker's `filters` query parameter and its `X-Registry-Auth` header, decoded.

`filters` is JSON: `{"dangling": ["true"]}`, or the older form docker-py and the CLI
still send, `{"dangling": {"true": true}}`. `X-Registry-Auth` is base64url JSON
`{"username", "password", "serveraddress", "identitytoken"}`.
"""

from __future__ import annotations

import base64
import binascii
import json

from dockyard.agent.dockerapi.errors import bad_request
from dockyard.common.distribution.auth import Credentials

__all__ = ["MAX_AUTH_HEADER", "MAX_FILTERS", "parse_filters", "query_bool", "registry_auth"]

MAX_FILTERS = 64 * 1024
"""Longest `filters` value read (a few hundred names fit)."""
MAX_AUTH_HEADER = 64 * 1024
"""Longest `X-Registry-Auth` header read (an identity token fits)."""


def parse_filters(text: str | None) -> dict[str, list[str]]:
    """The filters as name -> values.

    Raises:
        DockerApiError: 400 naming what is wrong (not JSON, not an object of lists).
    """
    if not text:
        return {}
    if len(text) > MAX_FILTERS:
        raise bad_request(f"filters: longer than {MAX_FILTERS} characters")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise bad_request(f"invalid filters: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request("invalid filters: not a JSON object")
    filters: dict[str, list[str]] = {}
    for name, values in value.items():
        if isinstance(values, dict):
            items = [k for k, on in values.items() if on]
        elif isinstance(values, list):
            items = values
        else:
            raise bad_request(f"invalid filter {name!r}: not a list or an object")
        if not all(isinstance(v, str) for v in items):
            raise bad_request(f"invalid filter {name!r}: values must be strings")
        filters[str(name)] = [str(v) for v in items]
    return filters


def query_bool(value: str | None, default: bool = False) -> bool:
    """A boolean query parameter as Docker reads them (`1`, `true`, `True`)."""
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no")


def registry_auth(header: str | None) -> Credentials | None:
    """The credentials of an `X-Registry-Auth` header (None: none given, or empty ones).

    Raises:
        DockerApiError: 400 when the header is not base64 JSON.
    """
    if not header:
        return None
    if len(header) > MAX_AUTH_HEADER:
        raise bad_request(f"X-Registry-Auth: longer than {MAX_AUTH_HEADER} characters")
    text = header.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad_request("X-Registry-Auth: not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise bad_request("X-Registry-Auth: not a JSON object")
    token = value.get("identitytoken") or ""
    username = value.get("username") or ""
    password = value.get("password") or ""
    if not isinstance(token, str) or not isinstance(username, str) or not isinstance(password, str):
        raise bad_request("X-Registry-Auth: username, password and identitytoken are strings")
    if token:
        return Credentials("<token>", token)
    if not username and not password:
        return None
    return Credentials(username, password)
