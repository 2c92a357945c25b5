"""Hostile registries and peers against the pull's bounds.

A fake registry (aiohttp, in the test) lies about sizes, sends more than it declared,
streams without end or trickles: every pull must stop at the declared size, the 4 MiB
manifest and config caps or the pull deadline, name what was wrong, and keep nothing.
The normal path against the real registry is in test_images_registry.py and
test_peer_fetch.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.errors import (
    ImageError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    SizeMismatch,
)
from dockyard.agent.images.peer_fetch import PeerFetcher
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.media import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, sha256_digest
from dockyard.common.distribution.registry import RegistryConfig
from dockyard.v1 import peer_pb2 as pb
from dockyard.v1 import peer_pb2_grpc
from tests.ports import free_port

MiB = 1024 * 1024
CHUNK = 256 * 1024
FOREVER = 128 * MiB
"""What an endless stream sends at most, so a client that never stops still ends."""
LAYER = b"L" * MiB
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def config_blob(pad: int = 0) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "pad": "p" * pad,
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"diff")]},
        }
    ).encode()


def manifest(
    config: bytes, *, config_size: int | None = None, layer_size: int = len(LAYER)
) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config) if config_size is None else config_size,
            },
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": sha256_digest(LAYER), "size": layer_size}
            ],
        }
    ).encode()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Registry:
    """A registry whose every answer a test can replace; it counts what it sent."""

    host: str = ""
    manifests: dict[str, Handler] = field(default_factory=dict)
    blobs: dict[str, Handler] = field(default_factory=dict)
    sent: int = 0
    blob_requests: list[str] = field(default_factory=list)
    token: Handler | None = None

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        return await self.manifests[request.match_info["ref"]](request)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        self.blob_requests.append(digest)
        return await self.blobs[digest](request)

    def serve_manifest(self, ref: str, body: bytes, media_type: str = OCI_MANIFEST) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=media_type)

        self.manifests[ref] = handler

    def serve_blob(self, body: bytes) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body)

        self.blobs[sha256_digest(body)] = handler

    async def token_answer(self, request: web.Request) -> web.StreamResponse:
        assert self.token is not None
        return await self.token(request)

    async def stream(
        self,
        request: web.Request,
        data: bytes,
        total: int,
        *,
        content_type: str = "application/octet-stream",
        pause: float = 0.0,
        status: int = 200,
    ) -> web.StreamResponse:
        """Send `data` repeated up to `total` bytes, chunked (no Content-Length)."""
        resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await resp.prepare(request)
        sent = 0
        try:
            while sent < total:
                piece = data[: total - sent]
                await resp.write(piece)
                sent += len(piece)
                self.sent += len(piece)
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away: what we wanted
        return resp


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    state = Registry()
    app = web.Application()
    app.router.add_get("/v2/app/manifests/{ref}", state.manifest)
    app.router.add_get("/v2/app/blobs/{digest}", state.blob)
    app.router.add_get("/token", state.token_answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.host = f"127.0.0.1:{server.port}"
    try:
        yield state
    finally:
        await server.close()


def images(tmp_path: Path, **config: Any) -> ImageService:
    return ImageService(tmp_path / "store", RegistryConfig(attempts=2, retry_delay=0.01, **config))


def assert_nothing_kept(service: ImageService, *verified: bytes) -> None:
    """No image, no partial file, no blob but the `verified` ones (a config that came
    whole is kept until the store's GC, as any blob of an unfinished pull)."""
    assert service.store.blobs.digests() == {sha256_digest(blob) for blob in verified}
    assert list(service.store.blobs.tmp_dir.iterdir()) == []
    assert service.list() == []


async def pull(service: ImageService, ref: str) -> Any:
    # A pull that never ends fails the test instead of hanging it.
    return await asyncio.wait_for(service.pull(ref), 60)


async def test_a_layer_streamed_without_end_is_cut_at_its_declared_size(
    registry: Registry, tmp_path: Path
) -> None:
    config = config_blob()
    registry.serve_manifest("1", manifest(config))
    registry.serve_blob(config)

    async def endless(request: web.Request) -> web.StreamResponse:
        return await registry.stream(request, b"x" * CHUNK, FOREVER)

    registry.blobs[sha256_digest(LAYER)] = endless
    service = images(tmp_path)
    with pytest.raises(SizeMismatch) as refused:
        await pull(service, f"{registry.host}/app:1")
    message = str(refused.value)
    assert sha256_digest(LAYER) in message
    assert f"more bytes than the {len(LAYER)} declared" in message
    assert "refused" in message
    # Cut off near the declared size (socket buffers aside), not read to the end.
    assert registry.sent < 32 * MiB
    assert_nothing_kept(service, config)


async def test_a_content_length_over_the_declared_size_is_refused_before_reading(
    registry: Registry, tmp_path: Path
) -> None:
    config = config_blob()
    registry.serve_manifest("1", manifest(config))
    registry.serve_blob(config)

    async def too_long(request: web.Request) -> web.Response:
        return web.Response(body=LAYER + LAYER)

    registry.blobs[sha256_digest(LAYER)] = too_long
    service = images(tmp_path)
    with pytest.raises(
        SizeMismatch, match=f"announces {2 * len(LAYER)} bytes, {len(LAYER)} declared"
    ):
        await pull(service, f"{registry.host}/app:1")
    assert_nothing_kept(service, config)


async def test_a_layer_that_ends_short_of_its_declared_size_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    # The digest matches what is sent; the manifest declared more than that.
    config = config_blob()
    registry.serve_manifest("1", manifest(config, layer_size=len(LAYER) + 10))
    registry.serve_blob(config)
    registry.serve_blob(LAYER)
    service = images(tmp_path)
    with pytest.raises(
        SizeMismatch, match=f"{len(LAYER)} bytes received, {len(LAYER) + 10} declared"
    ):
        await pull(service, f"{registry.host}/app:1")
    assert_nothing_kept(service, config)


@pytest.mark.parametrize("endless", [False, True], ids=["content-length", "endless"])
async def test_a_manifest_over_4_mib_is_refused(
    registry: Registry, tmp_path: Path, endless: bool
) -> None:
    big = json.loads(manifest(config_blob()))
    big["annotations"] = {"pad": "p" * (5 * MiB)}
    body = json.dumps(big).encode()

    async def endless_manifest(request: web.Request) -> web.StreamResponse:
        return await registry.stream(request, body, FOREVER, content_type=OCI_MANIFEST)

    if endless:
        registry.manifests["1"] = endless_manifest
    else:
        registry.serve_manifest("1", body)
    service = images(tmp_path)
    with pytest.raises(SizeMismatch, match=f"limit of {4 * MiB} bytes") as refused:
        await pull(service, f"{registry.host}/app:1")
    assert "manifest 1 of app" in str(refused.value)
    assert registry.sent < 32 * MiB
    assert_nothing_kept(service)


async def test_a_config_declared_over_4_mib_is_never_downloaded(
    registry: Registry, tmp_path: Path
) -> None:
    config = config_blob(pad=5 * MiB)
    registry.serve_manifest("1", manifest(config))
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(
        SizeMismatch, match=f"declared {len(config)} bytes, more than the limit of {4 * MiB}"
    ):
        await pull(service, f"{registry.host}/app:1")
    assert registry.blob_requests == []
    assert_nothing_kept(service)


async def test_a_config_larger_than_declared_is_cut_off(registry: Registry, tmp_path: Path) -> None:
    config = config_blob(pad=MiB)
    registry.serve_manifest("1", manifest(config, config_size=1000))
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(SizeMismatch, match=f"announces {len(config)} bytes, 1000 declared"):
        await pull(service, f"{registry.host}/app:1")
    assert_nothing_kept(service)


async def test_an_index_whose_manifest_is_not_the_size_it_declares_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    child = manifest(config_blob())
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256_digest(child),
                    "size": 100,
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    registry.serve_manifest("1", index, OCI_INDEX)
    registry.serve_manifest(sha256_digest(child), child)
    service = images(tmp_path)
    with pytest.raises(SizeMismatch, match=f"announces {len(child)} bytes, 100 declared"):
        await pull(service, f"{registry.host}/app:1")


@pytest.mark.parametrize("size", [-1, "12", None, True])
async def test_a_descriptor_without_a_byte_count_is_refused(
    registry: Registry, tmp_path: Path, size: Any
) -> None:
    config = config_blob()
    body = json.loads(manifest(config))
    body["layers"][0]["size"] = size
    registry.serve_manifest("1", json.dumps(body).encode())
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(
        ImageError,
        match=f"layers\\[0\\]: its descriptor declares size "
        f"{re.escape(repr(size))}, not a byte count",
    ):
        await pull(service, f"{registry.host}/app:1")
    assert registry.blob_requests == []  # refused before anything was fetched


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("config"), "manifest of .*: config: not a descriptor object"),
        (lambda m: m["config"].update(digest="md5:abc"), "config: digest 'md5:abc' is not sha256"),
        (lambda m: m.update(layers={"a": 1}), "layers is not a list"),
        (lambda m: m["layers"].append("x"), r"layers\[1\]: not a descriptor object"),
        (lambda m: m["layers"][0].update(mediaType=7), r"layers\[0\]: mediaType is not a string"),
        (lambda m: m.update(layers=m["layers"] * 129), "129 layers, more than the limit of 128"),
    ],
)
async def test_a_malformed_manifest_is_refused_before_any_download(
    registry: Registry, tmp_path: Path, change: Callable[[dict[str, Any]], object], words: str
) -> None:
    config = config_blob()
    body = json.loads(manifest(config))
    change(body)
    registry.serve_manifest("1", json.dumps(body).encode())
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(ImageError, match=words):
        await pull(service, f"{registry.host}/app:1")
    assert registry.blob_requests == []
    assert_nothing_kept(service)


async def test_layers_declaring_more_than_the_free_space_are_never_downloaded(
    registry: Registry, tmp_path: Path
) -> None:
    config = config_blob()
    huge = 1 << 50  # a pebibyte
    registry.serve_manifest("1", manifest(config, layer_size=huge))
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(
        SizeMismatch,
        match=f"its 1 missing layers declare {huge} bytes, and the image store has [0-9]+ free",
    ):
        await pull(service, f"{registry.host}/app:1")
    assert registry.blob_requests == [sha256_digest(config)]


async def test_a_config_with_other_diff_ids_than_layers_is_refused_before_the_layers(
    registry: Registry, tmp_path: Path
) -> None:
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    registry.serve_manifest("1", manifest(config))
    registry.serve_blob(config)
    service = images(tmp_path)
    with pytest.raises(ImageError, match="the manifest has 1 layers but the config 0 diff_ids"):
        await pull(service, f"{registry.host}/app:1")
    assert registry.blob_requests == [sha256_digest(config)]  # the layer was never asked for


async def test_a_trickling_registry_meets_the_pull_deadline(
    registry: Registry, tmp_path: Path
) -> None:
    # One byte every 0.1 s: never idle for read_timeout, never done.
    config = config_blob()
    registry.serve_manifest("1", manifest(config))
    registry.serve_blob(config)

    async def trickle(request: web.Request) -> web.StreamResponse:
        return await registry.stream(request, b"x", len(LAYER), pause=0.1)

    registry.blobs[sha256_digest(LAYER)] = trickle
    service = images(tmp_path, pull_deadline=1.5)
    with pytest.raises(RegistryUnreachable, match=r"did not finish within its deadline of 1\.5 s"):
        await pull(service, f"{registry.host}/app:1")
    assert list(service.store.blobs.tmp_dir.iterdir()) == []
    assert sha256_digest(LAYER) not in service.store.blobs.digests()


async def test_an_endless_error_answer_is_read_only_in_part(
    registry: Registry, tmp_path: Path
) -> None:
    async def endless_error(request: web.Request) -> web.StreamResponse:
        return await registry.stream(request, b"e" * CHUNK, FOREVER, status=400)

    registry.manifests["1"] = endless_error
    service = images(tmp_path)
    with pytest.raises(RegistryError, match=f"registry {registry.host} answered 400") as refused:
        await pull(service, f"{registry.host}/app:1")
    assert len(str(refused.value)) < 600
    assert registry.sent < 32 * MiB


@pytest.mark.parametrize("answer", ["endless", "list", "not json", "number token"])
async def test_a_token_server_answering_nonsense_is_refused(
    registry: Registry, tmp_path: Path, answer: str
) -> None:
    async def challenge(request: web.Request) -> web.Response:
        realm = f"http://{request.host}/token"
        return web.Response(
            status=401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'}
        )

    async def token(request: web.Request) -> web.StreamResponse:
        if answer == "endless":
            return await registry.stream(request, b'{"token": "' + b"t" * CHUNK, FOREVER)
        body = {"list": b"[1, 2]", "not json": b"<html>", "number token": b'{"token": 5}'}
        return web.Response(body=body[answer])

    registry.manifests["1"] = challenge
    registry.token = token
    service = images(tmp_path)
    expected = {
        "endless": f"larger than the limit of {MiB} bytes",
        "number token": "sent no token",
    }.get(answer, "something else than a JSON object")
    with pytest.raises(RegistryAuthError, match=expected):
        await pull(service, f"{registry.host}/app:1")
    assert registry.sent < 32 * MiB


class EndlessPeer(peer_pb2_grpc.PeerServicer):
    """Streams chunks for any digest, far past any declared size."""

    def __init__(self) -> None:
        self.sent = 0

    async def FetchBlob(
        self,
        request: pb.FetchBlobRequest,  # type: ignore[override]
        context: Any,
    ) -> AsyncIterator[pb.BlobChunk]:
        while self.sent < FOREVER:
            self.sent += CHUNK
            yield pb.BlobChunk(data=b"x" * CHUNK)


async def test_a_peer_streaming_past_the_declared_size_is_cut_off(tmp_path: Path) -> None:
    peer = EndlessPeer()
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(peer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    blobs = BlobStore(tmp_path / "blobs")
    try:
        digest = sha256_digest(LAYER)
        with pytest.raises(
            SizeMismatch,
            match=f"blob {digest} from node {address}: more bytes than the {len(LAYER)} declared",
        ):
            await asyncio.wait_for(
                PeerFetcher(None).fetch_from(address, digest, blobs, None, size=len(LAYER)), 60
            )
        assert peer.sent < 32 * MiB
        source = PeerFetcher(None).sources([address])
        assert source is not None
        assert await source.fetch(digest, blobs, limit=MiB) == ""  # refused, logged, skipped
        assert blobs.digests() == set()
        assert list(blobs.tmp_dir.iterdir()) == []
    finally:
        await server.stop(None)
