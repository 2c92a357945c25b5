"""Registry failure modes that a real registry will not produce on demand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dockyard.agent.images.errors import DigestMismatch, RegistryUnreachable
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.media import OCI_CONFIG, OCI_MANIFEST, sha256_digest
from dockyard.common.distribution.registry import RegistryConfig

CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
).encode()


def manifest(config: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()


class Fake:
    def __init__(self) -> None:
        self.manifest = manifest(CONFIG)
        self.announce: str | None = None
        self.blob = CONFIG
        self.failures = 0
        self.calls = 0

    async def handle_manifest(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            return web.Response(status=503, text="busy")
        headers = {"Docker-Content-Digest": self.announce or sha256_digest(self.manifest)}
        return web.Response(body=self.manifest, content_type=OCI_MANIFEST, headers=headers)

    async def handle_blob(self, request: web.Request) -> web.Response:
        return web.Response(body=self.blob, content_type="application/octet-stream")


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[Fake, str]]:
    state = Fake()
    app = web.Application()
    app.router.add_get("/v2/app/manifests/{ref}", state.handle_manifest)
    app.router.add_get("/v2/app/blobs/{digest}", state.handle_blob)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield state, f"127.0.0.1:{server.port}"
    finally:
        await server.close()


def service(tmp_path: Path) -> ImageService:
    return ImageService(tmp_path, RegistryConfig(attempts=3, retry_delay=0.01))


async def test_blob_digest_mismatch_is_refused(fake: tuple[Fake, str], tmp_path: Path) -> None:
    state, host = fake
    state.blob = CONFIG[:-1] + b" "  # as long as declared, but not the announced digest
    images = service(tmp_path)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await images.pull(f"{host}/app:1")
    assert images.store.blobs.digests() == set()
    assert list(images.store.blobs.tmp_dir.iterdir()) == []
    assert images.list() == []


async def test_manifest_digest_mismatch_is_refused(fake: tuple[Fake, str], tmp_path: Path) -> None:
    state, host = fake
    state.announce = sha256_digest(b"something else")
    images = service(tmp_path)
    with pytest.raises(DigestMismatch, match=f"manifest for {host}/app:1"):
        await images.pull(f"{host}/app:1")
    assert images.store.blobs.digests() == set()


async def test_pinned_digest_must_match(fake: tuple[Fake, str], tmp_path: Path) -> None:
    _, host = fake
    pinned = sha256_digest(b"not this manifest")
    with pytest.raises(DigestMismatch):
        await service(tmp_path).pull(f"{host}/app@{pinned}")


async def test_5xx_is_retried_then_succeeds(fake: tuple[Fake, str], tmp_path: Path) -> None:
    state, host = fake
    state.failures = 2
    image = await service(tmp_path).pull(f"{host}/app:1")
    assert image.digest == sha256_digest(state.manifest)
    assert state.calls == 3


async def test_5xx_retries_are_bounded(fake: tuple[Fake, str], tmp_path: Path) -> None:
    state, host = fake
    state.failures = 10
    with pytest.raises(RegistryUnreachable, match=f"registry {host} unreachable after 3"):
        await service(tmp_path).pull(f"{host}/app:1")
    assert state.calls == 3


async def test_cancelled_download_leaves_no_temp_file(tmp_path: Path) -> None:
    import asyncio

    big = b"x" * (4 << 20)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(big)]},
        }
    ).encode()
    body = json.loads(manifest(config))
    body["layers"] = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256_digest(big),
            "size": len(big),
        }
    ]
    started = asyncio.Event()
    release = asyncio.Event()

    async def get_manifest(request: web.Request) -> web.Response:
        return web.Response(body=json.dumps(body).encode(), content_type=OCI_MANIFEST)

    async def get_blob(request: web.Request) -> web.StreamResponse:
        if request.match_info["digest"] == sha256_digest(config):
            return web.Response(body=config)
        resp = web.StreamResponse(headers={"Content-Length": str(len(big))})
        await resp.prepare(request)
        await resp.write(big[: 2 << 20])
        started.set()
        await release.wait()  # stall: the client gets cancelled meanwhile
        return resp

    app = web.Application()
    app.router.add_get("/v2/app/manifests/{ref}", get_manifest)
    app.router.add_get("/v2/app/blobs/{digest}", get_blob)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        images = service(tmp_path)
        pull = asyncio.create_task(images.pull(f"127.0.0.1:{server.port}/app:1"))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.2)
        pull.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pull
        assert list(images.store.blobs.tmp_dir.iterdir()) == []
        assert sha256_digest(big) not in images.store.blobs.digests()
    finally:
        release.set()
        await server.close()


async def test_bearer_token_flow(tmp_path: Path) -> None:
    import base64

    token_requests: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        token_requests.append(dict(request.query))
        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        return web.json_response({"token": "tok-" + request.query["scope"]})

    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok-repository:app:pull":
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="fake",scope="repository:app:pull"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        if "manifests" in request.path:
            return web.Response(body=manifest(CONFIG), content_type=OCI_MANIFEST)
        return web.Response(body=CONFIG)

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get("/v2/app/{kind}/{ref}", guarded)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        host = f"127.0.0.1:{server.port}"
        auth = tmp_path / "config.json"
        creds = base64.b64encode(b"alice:s3cret").decode()
        auth.write_text(json.dumps({"auths": {f"http://{host}": {"auth": creds}}}))
        images = ImageService(tmp_path / "s", RegistryConfig(auth_file=auth))
        image = await images.pull(f"{host}/app:1")
        assert image.digest == sha256_digest(manifest(CONFIG))
        assert token_requests == [{"scope": "repository:app:pull", "service": "fake"}]
    finally:
        await server.close()
