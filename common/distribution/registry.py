"""An async OCI distribution (registry v2) client on aiohttp.

Requests are retried a bounded number of times with backoff on connection errors
and 5xx answers; a 401 is answered once with a bearer token or basic credentials.
Every manifest and blob is verified against its digest before it is kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import structlog
from yarl import URL

from dockyard.common.backoff import Backoff
from dockyard.common.distribution.auth import (
    Credentials,
    load_credentials,
    parse_challenge,
    token_for,
)
from dockyard.common.distribution.bounded import short_text
from dockyard.common.distribution.errors import (
    DigestMismatch,
    ManifestNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    SizeMismatch,
)
from dockyard.common.distribution.media import MANIFEST_ACCEPT, sha256_digest
from dockyard.common.distribution.platform import Platform, host_platform_default
from dockyard.common.reference import DEFAULT_REGISTRY, Reference

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_MANIFEST_BYTES",
    "BlobDestination",
    "Endpoint",
    "RegistryClient",
    "RegistryConfig",
]

log = structlog.get_logger(__name__)

DOCKER_HUB_HOST = "registry-1.docker.io"
_CHUNK = 256 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""The most a manifest or index may weigh (containerd's limit): they are read whole."""
MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""The most an image config may weigh: it is read whole and parsed as JSON."""
ByteProgress = Callable[[int], None]


class BlobOutput(Protocol):
    """Where one downloaded blob's bytes go (the agent's `BlobWriter`)."""

    @property
    def written(self) -> int: ...

    async def write(self, data: bytes) -> None: ...


class BlobDestination(Protocol):
    """A content store that verifies and commits blobs (the agent's `BlobStore`)."""

    def writer(
        self,
        expected: str | None = None,
        what: str | None = None,
        *,
        size: int | None = None,
        limit: int | None = None,
    ) -> AbstractAsyncContextManager[BlobOutput]: ...


@dataclass(frozen=True)
class RegistryConfig:
    """Per-registry settings of a daemon (mirrors, insecure hosts, credentials, bounds).

    Attributes:
        mirrors: Mirror URLs per registry host, tried before it (Docker's
            `registry-mirrors` are `{"docker.io": [...]}`).
        insecure_registries: Hosts (`host:port`) spoken to over plain HTTP. Loopback
            hosts are insecure by default, as in Docker.
        auth_file: A docker `config.json` with `auths`.
        max_concurrent_downloads: Layers downloaded at once per pull.
        max_concurrent_uploads: Blobs uploaded at once per push.
        attempts: Tries per request on connection errors and 5xx answers.
        retry_delay: First backoff delay in seconds (doubles per retry).
        connect_timeout: Seconds to establish a connection.
        read_timeout: Seconds without data before a read fails.
        chunk_size: Upload blobs larger than this in PATCH chunks (0: monolithic).
        platform: Platform to pick from manifest lists (default: this host).
        pull_deadline: Seconds a whole pull may take, however its registry or peers
            trickle bytes (each read within `read_timeout` does not make it endless).
    """

    mirrors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    insecure_registries: frozenset[str] = frozenset()
    auth_file: Path | None = None
    max_concurrent_downloads: int = 3
    max_concurrent_uploads: int = 5
    attempts: int = 3
    retry_delay: float = 0.2
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    chunk_size: int = 0
    platform: Platform = field(default_factory=host_platform_default)
    pull_deadline: float = 3600.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to talk to for a registry: the registry itself or a mirror."""

    registry: str
    host: str
    base_url: URL
    mirror: bool = False


def _is_insecure(host: str, config: RegistryConfig) -> bool:
    if host in config.insecure_registries:
        return True
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _endpoint(registry: str, location: str, config: RegistryConfig, mirror: bool) -> Endpoint:
    if "://" in location:
        url = URL(location)
        return Endpoint(registry, url.raw_authority, url.with_path("/"), mirror)
    scheme = "http" if _is_insecure(location, config) else "https"
    return Endpoint(registry, location, URL(f"{scheme}://{location}/"), mirror)


class RegistryClient:
    """Talks to registries; use as `async with RegistryClient(config) as client`.

    Args:
        config: Mirrors, insecure registries, credentials, retry bounds.
        credentials: Credentials by registry host that take precedence over the config's
            file (a service's `--with-registry-auth`, a `dockyard login` to check).
    """

    def __init__(
        self, config: RegistryConfig, credentials: Mapping[str, Credentials] | None = None
    ) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._credentials: dict[str, Credentials] | None = None
        self._given = dict(credentials or {})
        self._auth: dict[tuple[str, str], str] = {}

    async def __aenter__(self) -> RegistryClient:
        from_file = await asyncio.to_thread(load_credentials, self.config.auth_file)
        self._credentials = {**from_file, **self._given}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.read_timeout,
        )
        self._session = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open HTTP session."""
        if self._session is None:
            raise RuntimeError("RegistryClient used outside 'async with'")
        return self._session

    # ----- endpoints ---------------------------------------------------------------

    def endpoints(self, registry: str, pull: bool = True) -> list[Endpoint]:
        """Where to pull from (mirrors first, then the registry) or push to."""
        found = []
        if pull:
            found = [
                _endpoint(registry, m, self.config, True)
                for m in self.config.mirrors.get(registry, ())
            ]
        host = DOCKER_HUB_HOST if registry == DEFAULT_REGISTRY else registry
        found.append(_endpoint(registry, host, self.config, False))
        return found

    def _creds(self, ep: Endpoint) -> Credentials | None:
        creds = self._credentials or {}
        return creds.get(ep.host) or (None if ep.mirror else creds.get(ep.registry))

    # ----- requests ------------------------------------------------------------------

    async def request(
        self,
        ep: Endpoint,
        method: str,
        url: URL | str,
        scope: str,
        ok: Sequence[int],
        *,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """One request with auth and bounded retries; the caller releases the response.

        Returns:
            The response; its status is in `ok`, or 404 (the caller decides).

        Raises:
            RegistryUnreachable: connection errors or 5xx after every attempt.
            RegistryAuthError: 401/403 even with credentials.
            RegistryError: any other status.
        """
        target = url if isinstance(url, URL) else ep.base_url.join(URL(url))
        backoff = Backoff(initial=self.config.retry_delay, maximum=5.0)
        last: str = ""
        authed = False
        attempt = 0
        while attempt < self.config.attempts:
            hdrs = dict(headers or {})
            token = self._auth.get((ep.host, scope))
            if token:
                hdrs["Authorization"] = token
            try:
                resp = await self.session.request(
                    method, target, headers=hdrs, data=body() if body else None
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status == 401 and not authed:
                    challenge = resp.headers.get("WWW-Authenticate", "")
                    resp.release()
                    await self._authenticate(ep, challenge, scope)
                    authed = True
                    continue
                if resp.status in ok or resp.status == 404:
                    return resp
                text = await short_text(resp, 300)
                resp.release()
                if resp.status in (401, 403):
                    raise RegistryAuthError(
                        f"registry {ep.host} denied {method} {target.path}: {resp.status} {text}"
                    )
                if resp.status < 500:
                    raise RegistryError(
                        f"registry {ep.host} answered {resp.status} to {method} "
                        f"{target.path}: {text}"
                    )
                last = f"HTTP {resp.status}: {text}"
            attempt += 1
            if attempt < self.config.attempts:
                log.debug("registry.request_retry", registry=ep.host, error=last)
                await asyncio.sleep(backoff.next_delay())
        raise RegistryUnreachable(
            f"registry {ep.host} unreachable after {self.config.attempts} attempts: {last}"
        )

    async def _authenticate(self, ep: Endpoint, header: str, scope: str) -> None:
        challenge = parse_challenge(header)
        creds = self._creds(ep)
        if challenge.scheme == "bearer":
            token = await token_for(self.session, challenge, scope, creds, ep.host)
            self._auth[(ep.host, scope)] = f"Bearer {token}"
        elif challenge.scheme == "basic":
            if creds is None:
                raise RegistryAuthError(
                    f"registry {ep.host} wants a username and password and none are "
                    f"configured for it"
                )
            self._auth[(ep.host, scope)] = creds.basic_header()
        else:
            raise RegistryAuthError(f"registry {ep.host} sent unsupported challenge {header!r}")

    # ----- manifests -------------------------------------------------------------------

    async def get_manifest(
        self, ep: Endpoint, ref: Reference, reference: str, size: int | None = None
    ) -> tuple[bytes, str, str]:
        """Fetch and verify a manifest or index by tag or digest.

        The body is read up to MAX_MANIFEST_BYTES, and up to `size` when an index
        declared it.

        Returns:
            (body, media type from the Content-Type header, digest).

        Raises:
            ManifestNotFound: the registry has no such manifest.
            DigestMismatch: the body does not match the digest asked for or announced.
            SizeMismatch: the body is over the limit or not the size declared.
        """
        scope = f"repository:{ref.repository}:pull"
        url = f"/v2/{ref.repository}/manifests/{reference}"
        resp = await self.request(
            ep, "GET", url, scope, (200,), headers={"Accept": MANIFEST_ACCEPT}
        )
        async with resp:
            if resp.status == 404:
                raise ManifestNotFound(
                    f"manifest for {ref} not found in registry {ref.registry}"
                    + (f" (mirror {ep.host})" if ep.mirror else "")
                )
            what = f"manifest {reference} of {ref.repository} from {ep.host}"
            body = await _read_bounded(resp, what, size, MAX_MANIFEST_BYTES)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            announced = resp.headers.get("Docker-Content-Digest")
        digest = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else announced
        if expected and expected != digest:
            raise DigestMismatch(
                f"manifest for {ref} from {ep.host}: digest mismatch, expected {expected}, "
                f"got {digest}; refused"
            )
        return body, media_type, digest

    async def resolve(self, ref: Reference) -> tuple[Endpoint, bytes, str, str]:
        """Fetch `ref`'s manifest (or index) by its digest, else its tag, mirrors first.

        A mirror that fails is skipped; the registry itself is the last word.

        Returns:
            (the endpoint that answered, body, media type, digest).
        """
        for ep in self.endpoints(ref.registry):
            try:
                body, media_type, digest = await self.get_manifest(
                    ep, ref, ref.digest or ref.tag or ""
                )
                return ep, body, media_type, digest
            except RegistryError as exc:
                if not ep.mirror:
                    raise
                log.info("registry.mirror_failed", mirror=ep.host, error=str(exc))
        raise AssertionError("endpoints() always ends with the registry itself")

    async def put_manifest(
        self, ep: Endpoint, ref: Reference, reference: str, body: bytes, media_type: str
    ) -> str:
        """Upload a manifest under a tag or digest; returns its digest."""
        scope = f"repository:{ref.repository}:pull,push"
        resp = await self.request(
            ep,
            "PUT",
            f"/v2/{ref.repository}/manifests/{reference}",
            scope,
            (200, 201),
            headers={"Content-Type": media_type},
            body=lambda: body,
        )
        async with resp:
            if resp.status == 404:
                raise RegistryError(f"registry {ep.host} has no repository {ref.repository}")
            announced = resp.headers.get("Docker-Content-Digest")
        digest = sha256_digest(body)
        if announced and announced != digest:
            raise DigestMismatch(f"registry {ep.host} stored manifest as {announced}, not {digest}")
        return digest

    # ----- blobs ------------------------------------------------------------------------

    async def download_blob(
        self,
        ep: Endpoint,
        repository: str,
        digest: str,
        blobs: BlobDestination,
        on_bytes: ByteProgress | None = None,
        *,
        size: int | None = None,
        limit: int | None = None,
    ) -> None:
        """Download a blob into the store, verified; retried from scratch on errors.

        `size` is the size the manifest declared: a registry that sends more is cut off
        at the first byte over. `limit` caps a blob whose size is not declared.

        Raises:
            DigestMismatch: the content does not hash to `digest` (nothing is kept).
            SizeMismatch: more or fewer bytes than declared, or over `limit`.
            RegistryError: the registry does not have it.
        """
        scope = f"repository:{repository}:pull"
        url = f"/v2/{repository}/blobs/{digest}"
        for attempt in range(1, self.config.attempts + 1):
            resp = await self.request(ep, "GET", url, scope, (200,))
            try:
                async with resp:
                    if resp.status == 404:
                        raise RegistryError(
                            f"blob {digest} of {repository} not found in registry {ep.host}"
                        )
                    what = f"blob {digest} from {ep.host}"
                    _check_length(resp, what, size, limit)
                    async with blobs.writer(digest, what, size=size, limit=limit) as out:
                        async for chunk in resp.content.iter_chunked(_CHUNK):
                            await out.write(chunk)
                            if on_bytes:
                                on_bytes(out.written)
                return
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt == self.config.attempts:
                    raise RegistryUnreachable(
                        f"registry {ep.host}: download of {digest} failed after "
                        f"{attempt} attempts: {exc}"
                    ) from exc
                log.warning("blob.download_retry", digest=digest, error=str(exc))

    async def blob_exists(self, ep: Endpoint, repository: str, digest: str) -> bool:
        """HEAD a blob."""
        scope = f"repository:{repository}:pull,push"
        resp = await self.request(ep, "HEAD", f"/v2/{repository}/blobs/{digest}", scope, (200,))
        resp.release()
        return resp.status == 200

    async def upload_blob(
        self,
        ep: Endpoint,
        repository: str,
        digest: str,
        path: Path,
        on_bytes: ByteProgress | None = None,
    ) -> None:
        """Upload a stored blob: one PUT, or PATCH chunks when it exceeds `chunk_size`."""
        scope = f"repository:{repository}:pull,push"
        resp = await self.request(ep, "POST", f"/v2/{repository}/blobs/uploads/", scope, (202,))
        location = self._location(ep, resp)
        size = (await asyncio.to_thread(path.stat)).st_size
        chunk = self.config.chunk_size
        offset = 0
        if chunk and size > chunk:
            while offset < size:
                length = min(chunk, size - offset)
                data = await asyncio.to_thread(_read_range, path, offset, length)
                resp = await self.request(
                    ep,
                    "PATCH",
                    location,
                    scope,
                    (202,),
                    body=lambda d=data: d,  # type: ignore[misc]
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + length - 1}",
                    },
                )
                location = self._location(ep, resp)
                offset += length
                if on_bytes:
                    on_bytes(offset)
            body: Callable[[], Any] | None = None
            headers = {"Content-Length": "0"}
        else:

            def body() -> Any:
                return _file_chunks(path, on_bytes)

            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = await self.request(
            ep,
            "PUT",
            location.update_query(digest=digest),
            scope,
            (201, 204),
            headers=headers,
            body=body,
        )
        resp.release()
        if resp.status == 404:
            raise RegistryError(f"registry {ep.host} lost the upload of {digest}")

    def _location(self, ep: Endpoint, resp: aiohttp.ClientResponse) -> URL:
        resp.release()
        if resp.status == 404:
            raise RegistryError(f"registry {ep.host} refused an upload: 404")
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {ep.host} gave no upload Location")
        return ep.base_url.join(URL(location))


def _check_length(
    resp: aiohttp.ClientResponse, what: str, size: int | None, limit: int | None
) -> None:
    """Refuse before reading when the announced Content-Length is already too much."""
    length = resp.content_length
    if length is None:
        return
    if size is not None and length > size:
        raise SizeMismatch(
            f"{what}: the registry announces {length} bytes, {size} declared; refused"
        )
    if limit is not None and length > limit:
        raise SizeMismatch(
            f"{what}: the registry announces {length} bytes, more than the "
            f"limit of {limit} bytes; refused"
        )


async def _read_bounded(
    resp: aiohttp.ClientResponse, what: str, size: int | None, limit: int
) -> bytes:
    """A whole body of at most `limit` bytes (and exactly `size` when declared),
    never holding more than one chunk over it."""
    _check_length(resp, what, size, limit)
    cap = min(limit, size) if size is not None else limit
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > cap:
            over = f"the {size} bytes declared" if cap == size else f"the limit of {limit} bytes"
            raise SizeMismatch(
                f"{what}: more than {over} (at least {len(body)} received); cut off and refused"
            )
    if size is not None and len(body) != size:
        raise SizeMismatch(f"{what}: {len(body)} bytes received, {size} declared; refused")
    return bytes(body)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


async def _file_chunks(path: Path, on_bytes: ByteProgress | None) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    sent = 0
    try:
        while chunk := await asyncio.to_thread(handle.read, 1 << 20):
            sent += len(chunk)
            yield chunk
            if on_bytes:
                on_bytes(sent)
    finally:
        handle.close()
