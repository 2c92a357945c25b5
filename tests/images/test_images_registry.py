from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.images.build import (
    big_layers,
    build_image,
    busybox_layer,
    busybox_spec,
    whiteout_layers,
)
from dockyard.agent.images.errors import ManifestNotFound, RegistryAuthError, RegistryUnreachable
from dockyard.agent.images.progress import ProgressEvent, Status
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.registry import RegistryConfig

pytestmark = pytest.mark.registry


def fast(**kwargs: object) -> RegistryConfig:
    return RegistryConfig(attempts=3, retry_delay=0.05, connect_timeout=2, **kwargs)  # type: ignore[arg-type]


async def test_push_then_pull_round_trip(registry: Any, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/test/whiteout:v1")
    source = ImageService(tmp_path / "a", fast())
    built = await build_image(source.store, whiteout_layers(), ref, busybox_spec())
    pushed_events: list[ProgressEvent] = []
    digest = await source.push(ref, pushed_events.append)
    assert digest == built.digest
    assert {e.status for e in pushed_events} >= {Status.PUSHED}

    target = ImageService(tmp_path / "b", fast())
    events: list[ProgressEvent] = []
    pulled = await target.pull(str(ref), events.append)
    assert pulled.digest == built.digest
    assert pulled.config_digest == built.config_digest
    assert pulled.config.cmd == ["sh"]
    assert [lay.digest for lay in pulled.layers] == [lay.digest for lay in built.layers]
    assert (target.lower_dirs(pulled)[-1] / "bin" / "busybox").is_file()
    for layer in pulled.layers:
        statuses = [e.status for e in events if e.digest == layer.digest]
        assert statuses[0] == Status.WAITING and statuses[-1] == Status.DONE
        assert Status.EXTRACTING in statuses
    assert target.resolve(f"{registry.host}/test/whiteout:v1").digest == built.digest

    again: list[ProgressEvent] = []
    await target.pull(ref, again.append)
    assert {e.status for e in again} == {Status.ALREADY_EXISTS}
    by_digest = await target.pull(ref.with_digest(built.digest))
    assert by_digest.digest == built.digest

    again_push: list[ProgressEvent] = []
    await source.push(ref, again_push.append)
    assert {e.status for e in again_push} == {Status.ALREADY_EXISTS}


async def test_chunked_push(registry: Any, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/test/big:chunked")
    source = ImageService(tmp_path / "a", fast(chunk_size=256 * 1024))
    built = await build_image(source.store, big_layers(2, 1_000_000), ref)
    await source.push(ref)
    pulled = await ImageService(tmp_path / "b", fast()).pull(ref)
    assert pulled.digest == built.digest


async def test_missing_image_names_ref_and_registry(registry: Any, tmp_path: Path) -> None:
    service = ImageService(tmp_path, fast())
    with pytest.raises(ManifestNotFound) as info:
        await service.pull(f"{registry.host}/library/nope")
    assert str(info.value) == (
        f"manifest for {registry.host}/library/nope:latest not found in registry {registry.host}"
    )
    assert service.store.blobs.digests() == set()


async def test_unreachable_registry_fails_fast(tmp_path: Path, closed_port: int) -> None:
    host = f"127.0.0.1:{closed_port}"  # nothing listens there
    service = ImageService(tmp_path, fast())
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable, match=f"registry {host} unreachable after 3 attempts"):
        await service.pull(f"{host}/app:1")
    assert time.monotonic() - started < 5


async def test_docker_io_through_mirror(mirror_registry: Any, tmp_path: Path) -> None:
    upstream_ref = parse_reference(f"{mirror_registry.host}/library/busybox:latest")
    source = ImageService(tmp_path / "a", fast())
    built = await build_image(source.store, [busybox_layer()], upstream_ref, busybox_spec())
    await source.push(upstream_ref)

    config = fast(mirrors={"docker.io": [mirror_registry.url]})
    service = ImageService(tmp_path / "b", config)
    pulled = await service.pull("busybox")
    assert pulled.digest == built.digest
    assert service.resolve("busybox:latest").digest == built.digest
    assert service.list()[0].repository == "busybox"


async def test_basic_auth_with_config_json(auth_registry: Any, tmp_path: Path) -> None:
    ref = parse_reference(f"{auth_registry.host}/private/bb:1")
    anonymous = ImageService(tmp_path / "anon", fast())
    await build_image(anonymous.store, [busybox_layer()], ref, busybox_spec())
    with pytest.raises(RegistryAuthError, match="username and password"):
        await anonymous.push(ref)

    config = fast(auth_file=auth_registry.auth_file(tmp_path))
    source = ImageService(tmp_path / "anon", config)
    digest = await source.push(ref)
    pulled = await ImageService(tmp_path / "b", config).pull(ref)
    assert pulled.digest == digest


async def test_concurrent_pulls_share_one_transfer(registry: Any, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/test/bb:1")
    source = ImageService(tmp_path / "a", fast())
    await build_image(source.store, [busybox_layer()], ref, busybox_spec())
    await source.push(ref)
    target = ImageService(tmp_path / "b", fast())
    images = await asyncio.gather(*(target.pull(ref) for _ in range(5)))
    assert len({image.digest for image in images}) == 1


async def test_index_platform_selection(registry: Any, tmp_path: Path) -> None:
    from dockyard.common.distribution.media import OCI_INDEX, sha256_digest
    from dockyard.common.distribution.platform import Platform
    from dockyard.common.distribution.registry import RegistryClient

    source = ImageService(tmp_path / "a", fast())
    amd = await build_image(
        source.store,
        [busybox_layer()],
        parse_reference(f"{registry.host}/multi/app:amd64"),
        busybox_spec(),
    )
    arm = await build_image(
        source.store,
        whiteout_layers(),
        parse_reference(f"{registry.host}/multi/app:arm64"),
        busybox_spec(),
    )
    await source.push(f"{registry.host}/multi/app:amd64")
    await source.push(f"{registry.host}/multi/app:arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": source.store.blobs.size(image.digest),
                "platform": {"os": "linux", "architecture": arch, **extra},
            }
            for image, arch, extra in ((arm, "arm64", {"variant": "v8"}), (amd, "amd64", {}))
        ],
    }
    ref = parse_reference(f"{registry.host}/multi/app:latest")
    async with RegistryClient(fast()) as client:
        endpoint = client.endpoints(ref.registry, pull=False)[0]
        body = json.dumps(index).encode()
        await client.put_manifest(endpoint, ref, "latest", body, OCI_INDEX)

    amd_service = ImageService(tmp_path / "x", fast(platform=Platform("linux", "amd64")))
    amd_pull = await amd_service.pull(ref)
    assert amd_pull.digest == amd.digest
    arm_service = ImageService(tmp_path / "y", fast(platform=Platform("linux", "arm64", "v8")))
    assert (await arm_service.pull(ref)).digest == arm.digest
    with pytest.raises(ManifestNotFound, match="no manifest for platform linux/s390x"):
        await ImageService(tmp_path / "z", fast(platform=Platform("linux", "s390x"))).pull(ref)
    # the index blob is kept with the image and collected with it
    # as docker rmi: the tag, then the repo digest (the index's) it was pulled at
    lines = await arm_service.remove(ref)
    repo_digest = ref.with_tag("").with_digest(sha256_digest(body)).familiar()
    assert lines == [
        "Untagged: " + ref.familiar(),
        "Untagged: " + repo_digest,
        f"Deleted: {arm.digest}",
    ]
    assert arm_service.store.blobs.digests() == set()


async def test_mirror_without_the_image_falls_back(
    registry: Any, mirror_registry: Any, tmp_path: Path
) -> None:
    ref = parse_reference(f"{registry.host}/only/upstream:1")
    source = ImageService(tmp_path / "a", fast())
    built = await build_image(source.store, [busybox_layer()], ref, busybox_spec())
    await source.push(ref)
    config = fast(mirrors={registry.host: [mirror_registry.url]})
    pulled = await ImageService(tmp_path / "b", config).pull(ref)
    assert pulled.digest == built.digest
