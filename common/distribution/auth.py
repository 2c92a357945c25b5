"""Registry credentials (docker `config.json`) and the token/basic auth handshake."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from dockyard.common.distribution.bounded import read_at_most, short_text
from dockyard.common.distribution.errors import RegistryAuthError

__all__ = [
    "MAX_TOKEN_RESPONSE",
    "Challenge",
    "Credentials",
    "load_credentials",
    "parse_challenge",
    "token_for",
]

log = structlog.get_logger(__name__)

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password (or identity token as password)."""

    username: str
    password: str

    def basic_header(self) -> str:
        """The `Authorization: Basic` header value."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed `WWW-Authenticate` header."""

    scheme: str
    params: Mapping[str, str]


def _host_key(key: str) -> str:
    if key in _DOCKER_HUB_KEYS or key.startswith("https://index.docker.io"):
        return "docker.io"
    key = key.removeprefix("https://").removeprefix("http://")
    return key.split("/", 1)[0]


def load_credentials(path: Path | None) -> dict[str, Credentials]:
    """Read `auths` of a docker `config.json` into `{registry host: credentials}`.

    Entries with `auth` (base64 `user:password`) or `username`/`password` count;
    a missing file means no credentials. Blocking (small file).

    Raises:
        RegistryAuthError: the file exists but is not a docker config.
    """
    if path is None or not path.exists():
        return {}
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise RegistryAuthError(f"cannot read registry credentials from {path}: {exc}") from exc
    found: dict[str, Credentials] = {}
    for key, entry in auths.items():
        creds = _entry_credentials(entry)
        if creds is not None:
            found[_host_key(key)] = creds
    return found


def _entry_credentials(entry: Mapping[str, str]) -> Credentials | None:
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(user, password)
    if entry.get("username"):
        return Credentials(entry["username"], entry.get("password", ""))
    return None


def parse_challenge(header: str) -> Challenge:
    """Parse `Bearer realm="...",service="...",scope="..."` (or `Basic realm=...`)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


MAX_TOKEN_RESPONSE = 1024 * 1024
"""The most of a token server's answer that is read (tokens are a few KiB)."""


async def token_for(
    session: aiohttp.ClientSession,
    challenge: Challenge,
    scope: str,
    creds: Credentials | None,
    host: str,
) -> str:
    """Fetch a bearer token from the challenge's realm for `scope`.

    Raises:
        RegistryAuthError: the token server refused or answered nonsense.
    """
    realm = challenge.params.get("realm")
    if not realm:
        raise RegistryAuthError(f"registry {host} sent a Bearer challenge without realm")
    params = {"scope": scope}
    if "service" in challenge.params:
        params["service"] = challenge.params["service"]
    headers = {"Authorization": creds.basic_header()} if creds else {}
    try:
        async with session.get(realm, params=params, headers=headers) as resp:
            if resp.status != 200:
                text = await short_text(resp, 200)
                raise RegistryAuthError(
                    f"token server {realm} for registry {host} answered {resp.status}: {text}"
                )
            raw, more = await read_at_most(resp, MAX_TOKEN_RESPONSE)
    except aiohttp.ClientError as exc:
        raise RegistryAuthError(f"token server {realm} for registry {host}: {exc}") from exc
    if more:
        raise RegistryAuthError(
            f"token server {realm} for registry {host}: its answer is "
            f"larger than the limit of {MAX_TOKEN_RESPONSE} bytes"
        )
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RegistryAuthError(
            f"token server {realm} for registry {host} answered something else than a JSON object"
        )
    token = body.get("token") or body.get("access_token")
    if not token or not isinstance(token, str):
        raise RegistryAuthError(f"token server {realm} for registry {host} sent no token")
    log.debug("registry.token_obtained", registry=host, scope=scope)
    return str(token)
