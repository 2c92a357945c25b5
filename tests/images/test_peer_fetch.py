"""Pulling layers from other nodes' agents (Peer.FetchBlob) before the registry.

A real registry holds the manifest; the test deletes the image's blobs from it after
the first node pulled, so a second node's pull can only succeed through its peer.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.agent.containers.peer_servicer import CHUNK_BYTES, PeerServicer
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.build import Dir, RandomFile, build_image, busybox_spec
from dockyard.agent.images.errors import RegistryError, RegistryUnreachable
from dockyard.agent.images.models import Image
from dockyard.agent.images.peer_fetch import PeerFetcher
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.registry import RegistryConfig
from dockyard.v1 import peer_pb2 as pb
from dockyard.v1 import peer_pb2_grpc
from tests.ports import free_port

pytestmark = pytest.mark.registry


def fast() -> RegistryConfig:
    return RegistryConfig(attempts=2, retry_delay=0.05, connect_timeout=2)


def data_layers() -> list[list[Any]]:
    """Two layers of random bytes: content no other test has in its registry."""
    return [[Dir("data"), RandomFile(f"data/part{i}.bin", 256 * 1024)] for i in range(2)]


async def serve(servicer: peer_pb2_grpc.PeerServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    return server, address


@pytest.fixture
async def pushed(registry: Any, tmp_path: Path) -> AsyncIterator[tuple[str, Image]]:
    """An image pushed to the registry and built in store `src`: (reference, image)."""
    ref = parse_reference(f"{registry.host}/test/peer:v1")
    source = ImageService(tmp_path / "src", fast())
    image = await build_image(source.store, data_layers(), ref, busybox_spec())
    await source.push(ref)
    yield str(ref), image


def delete_blobs(registry: Any, image: Image) -> None:
    """Remove the image's config and layers from the registry (its manifest stays)."""
    for digest in [image.config_digest, *(layer.digest for layer in image.layers)]:
        request = urllib.request.Request(
            f"{registry.url}/v2/test/peer/blobs/{digest}", method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202


def node(tmp_path: Path, name: str) -> ImageService:
    service = ImageService(tmp_path / name, fast())
    service.peer_fetcher = PeerFetcher(None)
    return service


async def test_a_pull_takes_the_blobs_a_registry_lost_from_a_peer(
    registry: Any,
    pushed: tuple[str, Image],
    tmp_path: Path,
) -> None:
    ref, image = pushed
    first = node(tmp_path, "first")
    await first.pull(ref)
    await asyncio.to_thread(delete_blobs, registry, image)
    server, address = await serve(PeerServicer(first.store.blobs))
    try:
        with pytest.raises(RegistryError, match="not found"):  # the registry alone cannot
            await node(tmp_path, "alone").pull(ref)
        second = node(tmp_path, "second")
        pulled = await second.pull(ref, peers=[address])
        assert pulled.digest == image.digest
        assert (second.lower_dirs(pulled)[0] / "data" / "part1.bin").stat().st_size == 256 * 1024
        for layer in image.layers:
            assert second.store.blobs.has(layer.digest)
    finally:
        await server.stop(None)


async def test_a_peer_that_is_down_or_lacks_the_blob_leaves_it_to_the_registry(
    pushed: tuple[str, Image],
    tmp_path: Path,
) -> None:
    ref, image = pushed
    empty, address = await serve(PeerServicer(BlobStore(tmp_path / "empty")))
    try:
        target = node(tmp_path, "target")
        started = asyncio.get_running_loop().time()
        pulled = await target.pull(ref, peers=[f"127.0.0.1:{free_port()}", address])
        assert pulled.digest == image.digest
        assert asyncio.get_running_loop().time() - started < 30  # no peer held it up for long
    finally:
        await empty.stop(None)


class LyingPeer(PeerServicer):
    """Serves other bytes than the digest's for every blob it is asked for."""

    async def FetchBlob(
        self,
        request: pb.FetchBlobRequest,  # type: ignore[override]
        context: Any,
    ) -> AsyncIterator[pb.BlobChunk]:
        yield pb.BlobChunk(data=b"not the layer you asked for", size=27)


async def test_a_peer_sending_other_bytes_is_refused_and_nothing_of_it_is_kept(
    pushed: tuple[str, Image],
    tmp_path: Path,
) -> None:
    ref, image = pushed
    liar, address = await serve(LyingPeer(BlobStore(tmp_path / "liar")))
    try:
        target = node(tmp_path, "target")
        pulled = await target.pull(ref, peers=[address])  # the registry still has them
        assert pulled.digest == image.digest
        for layer in image.layers:
            blob = target.store.blobs.path(layer.digest).read_bytes()
            assert b"not the layer" not in blob and len(blob) == layer.size
        assert not any((tmp_path / "target" / "tmp").iterdir())  # no partial file left
    finally:
        await liar.stop(None)


async def test_the_peer_service_names_what_is_wrong(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"x" * (2 * CHUNK_BYTES + 1)  # three chunks, the last of one byte
    stored = await blobs.put_bytes(data)
    server, address = await serve(PeerServicer(blobs))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = peer_pb2_grpc.PeerStub(channel)
            chunks = [c async for c in stub.FetchBlob(pb.FetchBlobRequest(digest=stored))]
            assert b"".join(c.data for c in chunks) == data
            assert [c.size for c in chunks] == [len(data), 0, 0]
            for digest, code, words in (
                ("sha256:" + "0" * 64, grpc.StatusCode.NOT_FOUND, "not on this node"),
                ("../../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "digest"),
                ("", grpc.StatusCode.INVALID_ARGUMENT, "digest"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    [c async for c in stub.FetchBlob(pb.FetchBlobRequest(digest=digest))]
                assert refused.value.code() == code
                assert words in (refused.value.details() or "")
    finally:
        await server.stop(None)


async def test_a_pinned_image_comes_whole_from_a_peer_while_the_registry_is_down(
    pushed: tuple[str, Image],
    tmp_path: Path,
) -> None:
    ref, image = pushed
    first = node(tmp_path, "first")
    await first.pull(ref)
    down = f"127.0.0.1:{free_port()}/test/peer"  # nothing listens there
    server, address = await serve(PeerServicer(first.store.blobs))
    try:
        with pytest.raises(RegistryUnreachable):
            await node(tmp_path, "alone").pull(f"{down}@{image.digest}")
        with pytest.raises(RegistryUnreachable):  # a tag means what the registry says
            await node(tmp_path, "tagged").pull(f"{down}:v1", peers=[address])
        second = node(tmp_path, "second")
        pulled = await second.pull(f"{down}:v1@{image.digest}", peers=[address])
        assert pulled.digest == image.digest
        assert second.resolve(f"{down}@{image.digest}").digest == image.digest
        assert (second.lower_dirs(pulled)[-1] / "data" / "part0.bin").is_file()
    finally:
        await server.stop(None)


async def test_pull_metrics_count_blobs_by_source(
    registry: Any,
    pushed: tuple[str, Image],
    tmp_path: Path,
) -> None:
    """The agent's `dockyard_image_pull_*` counters: the first node's blobs come from the
    registry, the second's (the registry lost them) from the first node."""
    from dockyard.agent.metrics.pulls import PullMetrics

    ref, image = pushed
    sizes = sum(layer.size for layer in image.layers)

    def counted(metrics: PullMetrics) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels["source"]): s.value
            for family in metrics.collect()
            for s in family.samples
            if s.name.endswith("_total")
        }

    first_metrics, second_metrics = PullMetrics(), PullMetrics()
    first = ImageService(tmp_path / "m1", fast(), on_blob=first_metrics.observe)
    await first.pull(ref)
    got = counted(first_metrics)
    assert got[("dockyard_image_pull_blobs_total", "registry")] == 1 + len(image.layers)
    assert got[("dockyard_image_pull_bytes_total", "registry")] > sizes
    assert got[("dockyard_image_pull_blobs_total", "peer")] == 0
    await asyncio.to_thread(delete_blobs, registry, image)
    server, address = await serve(PeerServicer(first.store.blobs))
    try:
        second = ImageService(tmp_path / "m2", fast(), on_blob=second_metrics.observe)
        second.peer_fetcher = PeerFetcher(None)
        await second.pull(ref, peers=[address])
    finally:
        await server.stop(None)
    got = counted(second_metrics)
    assert got[("dockyard_image_pull_blobs_total", "peer")] == 1 + len(image.layers)
    assert got[("dockyard_image_pull_bytes_total", "peer")] > sizes
    assert got[("dockyard_image_pull_seconds_total", "peer")] > 0
    assert got[("dockyard_image_pull_blobs_total", "registry")] == 0
