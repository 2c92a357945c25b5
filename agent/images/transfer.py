"""Pull and push: move an image between a registry (or other nodes) and the local store."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from dockyard.agent.images.content import manifest_media_type, parse_json
from dockyard.agent.images.descriptors import check_diff_ids, descriptor, image_descriptors
from dockyard.agent.images.errors import (
    ImageError,
    ManifestNotFound,
    RegistryError,
    RegistryUnreachable,
    SizeMismatch,
)
from dockyard.agent.images.image_store import ImageStore, Lease
from dockyard.agent.images.models import Image, Layer
from dockyard.agent.images.peer_fetch import PeerSources
from dockyard.agent.images.progress import ProgressCallback, ProgressEvent, Status, Throttle
from dockyard.agent.images.reference import Reference
from dockyard.common.distribution.media import INDEX_TYPES
from dockyard.common.distribution.platform import Platform
from dockyard.common.distribution.registry import (
    MAX_MANIFEST_BYTES,
    ByteProgress,
    Endpoint,
    RegistryClient,
)

__all__ = ["BlobObserver", "pull_image", "push_image", "run_all", "select_platform"]

log = structlog.get_logger(__name__)

BlobObserver = Callable[[str, int, float], None]
"""Told of every blob a pull stored: its source (`peer` or `registry`), bytes, seconds."""


async def run_all(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run jobs concurrently; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


def select_platform(index: dict[str, Any], wanted: Platform, what: str) -> dict[str, Any]:
    """Pick the descriptor of `wanted` from a manifest list / OCI index.

    A missing variant in the index matches any wanted variant.

    Raises:
        ManifestNotFound: the index has no manifest for the platform.
    """
    candidates = []
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        if plat.get("os") != wanted.os or plat.get("architecture") != wanted.architecture:
            continue
        variant = plat.get("variant")
        if variant and wanted.variant and variant != wanted.variant:
            continue
        candidates.append(desc)
    if not candidates:
        available = sorted(
            f"{(d.get('platform') or {}).get('os')}/{(d.get('platform') or {}).get('architecture')}"
            for d in index.get("manifests") or []
        )
        raise ManifestNotFound(
            f"{what} has no manifest for platform {wanted} (it has {', '.join(available)})"
        )
    exact = [d for d in candidates if (d.get("platform") or {}).get("variant") == wanted.variant]
    chosen: dict[str, Any] = (exact or candidates)[0]
    return chosen


async def pull_image(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    progress: ProgressCallback,
    peers: PeerSources | None = None,
    observe: BlobObserver | None = None,
) -> Image:
    """Pull `ref` into the store (mirrors first), verifying every digest.

    The manifest comes from the registry; each blob the store lacks is asked of `peers`
    (other nodes' agents) first, then of the registry. A pinned reference (`@sha256:`)
    whose manifest the registry cannot give (down, or the manifest deleted) is taken from
    the peers too: its digest is its content's, so the whole image then comes from them.

    Every blob is read up to the size its descriptor declares (manifests and configs
    up to 4 MiB), and the whole pull must end within `pull_deadline` seconds.

    Returns:
        The stored image, named by `ref`.

    Raises:
        RegistryUnreachable: the pull did not end within the deadline.
        SizeMismatch: a blob or manifest was not the size declared or over its cap.
    """
    deadline = client.config.pull_deadline
    try:
        async with asyncio.timeout(deadline) as scope:
            return await _pull(client, store, ref, progress, peers, observe)
    except TimeoutError:
        if not scope.expired():
            raise
        raise RegistryUnreachable(
            f"pull of {ref} did not finish within its deadline of {deadline:g} s; "
            f"nothing of the unfinished blobs was kept"
        ) from None


async def _pull(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    progress: ProgressCallback,
    peers: PeerSources | None,
    observe: BlobObserver | None,
) -> Image:
    with store.lease() as lease:
        ep, body, header_type, digest = await _resolve(client, store, lease, ref, peers)
        repo_digest = Reference(ref.registry, ref.repository, None, digest)
        manifest = parse_json(body, f"manifest of {ref}")
        extra: list[str] = []
        if manifest_media_type(manifest, header_type) in INDEX_TYPES:
            lease.add(digest)
            await store.blobs.put_bytes(body, digest)
            extra.append(digest)
            desc = descriptor(
                select_platform(manifest, client.config.platform, f"{ref}"),
                f"index of {ref}: the {client.config.platform} manifest",
            )
            body, header_type, digest = await _child_manifest(
                client, store, lease, ep, ref, desc.digest, peers, desc.size
            )
            manifest = parse_json(body, f"manifest of {ref}")
        lease.add(digest)
        if manifest_media_type(manifest, header_type) in INDEX_TYPES:
            raise RegistryError(f"{ref}: nested indexes are not supported")
        config_desc, layer_descs = image_descriptors(manifest, f"manifest of {ref}")
        config_digest = config_desc.digest
        lease.add(config_digest)
        if not store.blobs.has(config_digest):
            await _download(
                client,
                ep,
                ref.repository,
                config_digest,
                store,
                peers,
                size=config_desc.size,
                observe=observe,
            )
        config = parse_json(await store.blobs.read(config_digest), f"config of {ref}")
        diff_ids = check_diff_ids(config, layer_descs, f"config {config_digest} of {ref}")
        layers = [
            Layer(d.digest, d.size, d.media_type, diff_id)
            for d, diff_id in zip(layer_descs, diff_ids, strict=True)
        ]
        await _check_space(store, layers, f"{ref}")
        await _pull_layers(
            client,
            store,
            ep,
            ref=ref,
            layers=layers,
            lease=lease,
            progress=progress,
            peers=peers,
            observe=observe,
        )
        await store.blobs.put_bytes(body, digest)
        # Also `name@digest` (Docker's RepoDigests), so a spec pinned to the digest
        # finds the image that was pulled by its tag.
        image = await store.commit(digest, dict.fromkeys([ref, repo_digest]), extra)
    log.info("image.pulled", ref=str(ref), digest=digest, endpoint=ep.host if ep else "peers")
    return image


Resolved = tuple[Endpoint | None, bytes, str, str]


async def _check_space(store: ImageStore, layers: list[Layer], what: str) -> None:
    """Refuse a pull whose missing layers declare more bytes than the store has free."""
    missing = {layer.digest: layer.size for layer in layers if not store.blobs.has(layer.digest)}
    needed = sum(missing.values())
    if not needed:
        return
    free = (await asyncio.to_thread(shutil.disk_usage, store.blobs.tmp_dir)).free
    if needed > free:
        raise SizeMismatch(
            f"{what}: its {len(missing)} missing layers declare {needed} bytes, "
            f"and the image store has {free} free; refused"
        )


async def _resolve(
    client: RegistryClient,
    store: ImageStore,
    lease: Lease,
    ref: Reference,
    peers: PeerSources | None,
) -> Resolved:
    """`ref`'s manifest or index: (the registry endpoint that gave it, or None when a
    peer did; body; media type header; digest)."""
    try:
        return await client.resolve(ref)
    except (RegistryUnreachable, ManifestNotFound) as exc:
        if ref.digest is None or peers is None:
            raise
        body = await _from_peers(store, lease, peers, ref.digest)
        if body is None:
            raise
        log.warning("image.manifest_from_peer", ref=str(ref), error=str(exc))
        return None, body, "", ref.digest


async def _child_manifest(
    client: RegistryClient,
    store: ImageStore,
    lease: Lease,
    ep: Endpoint | None,
    ref: Reference,
    digest: str,
    peers: PeerSources | None,
    size: int,
) -> tuple[bytes, str, str]:
    """The platform's manifest an index names (of the `size` it declares): from where
    the index came."""
    if ep is not None:
        return await client.get_manifest(ep, ref, digest, size)
    body = await _from_peers(store, lease, peers, digest, size) if peers is not None else None
    if body is None:
        raise RegistryUnreachable(f"{ref}: the registry failed and no peer has manifest {digest}")
    return body, "", digest


async def _from_peers(
    store: ImageStore, lease: Lease, peers: PeerSources, digest: str, size: int | None = None
) -> bytes | None:
    """A manifest fetched from the peers (verified, at most MAX_MANIFEST_BYTES and of
    `size` when declared, kept in the store), or None."""
    lease.add(digest)
    if store.blobs.has(digest) or await peers.fetch(
        digest, store.blobs, size=size, limit=MAX_MANIFEST_BYTES
    ):
        return await store.blobs.read(digest)
    return None


async def _pull_layers(
    client: RegistryClient,
    store: ImageStore,
    ep: Endpoint | None,
    *,
    ref: Reference,
    layers: list[Layer],
    lease: Lease,
    progress: ProgressCallback,
    peers: PeerSources | None,
    observe: BlobObserver | None,
) -> None:
    limit = asyncio.Semaphore(client.config.max_concurrent_downloads)
    for layer in layers:
        lease.add(layer.digest, layer.diff_id)

    async def one(layer: Layer) -> None:
        if store.blobs.has(layer.digest) and store.has_snapshot(layer.diff_id):
            progress(ProgressEvent(layer.digest, Status.ALREADY_EXISTS, layer.size, layer.size))
            return
        progress(ProgressEvent(layer.digest, Status.WAITING, 0, layer.size))
        async with limit:
            if not store.blobs.has(layer.digest):
                throttle = Throttle()

                def on_bytes(done: int) -> None:
                    if throttle.ready(done >= layer.size):
                        progress(ProgressEvent(layer.digest, Status.DOWNLOADING, done, layer.size))

                await _download(
                    client,
                    ep,
                    ref.repository,
                    layer.digest,
                    store,
                    peers,
                    on_bytes,
                    size=layer.size,
                    observe=observe,
                )
                progress(ProgressEvent(layer.digest, Status.VERIFYING, layer.size, layer.size))
        progress(ProgressEvent(layer.digest, Status.EXTRACTING, layer.size, layer.size))
        await store.ensure_snapshot(layer)
        progress(ProgressEvent(layer.digest, Status.DONE, layer.size, layer.size))

    await run_all([one(layer) for layer in layers])


async def _download(
    client: RegistryClient,
    ep: Endpoint | None,
    repository: str,
    digest: str,
    store: ImageStore,
    peers: PeerSources | None,
    on_bytes: ByteProgress | None = None,
    *,
    size: int,
    observe: BlobObserver | None = None,
) -> None:
    """Store blob `digest` of the declared `size`: from a peer that has it, else from the
    registry (`ep`; None when the registry already failed)."""
    start = time.monotonic()
    if peers is not None and await peers.fetch(digest, store.blobs, on_bytes, size=size):
        if observe is not None:
            observe("peer", size, time.monotonic() - start)
        return
    if ep is None:
        raise RegistryUnreachable(f"blob {digest}: the registry failed and no peer has it")
    start = time.monotonic()  # the peers' misses are not the registry's time
    await client.download_blob(ep, repository, digest, store.blobs, on_bytes, size=size)
    if observe is not None:
        observe("registry", size, time.monotonic() - start)


async def push_image(
    client: RegistryClient,
    store: ImageStore,
    image: Image,
    ref: Reference,
    progress: ProgressCallback,
) -> str:
    """Push a local image to `ref`'s registry: blobs, then the manifest under the tag.

    Returns:
        The manifest digest.
    """
    ep = client.endpoints(ref.registry, pull=False)[0]
    limit = asyncio.Semaphore(client.config.max_concurrent_uploads)
    blobs = [(layer.digest, layer.size) for layer in image.layers]
    blobs.append((image.config_digest, store.blobs.size(image.config_digest)))

    async def one(digest: str, size: int) -> None:
        async with limit:
            if await client.blob_exists(ep, ref.repository, digest):
                progress(ProgressEvent(digest, Status.ALREADY_EXISTS, size, size))
                return
            throttle = Throttle()

            def on_bytes(done: int) -> None:
                if throttle.ready(done >= size):
                    progress(ProgressEvent(digest, Status.UPLOADING, done, size))

            if not store.blobs.has(digest):
                raise ImageError(f"blob {digest} of {ref} is not stored locally; cannot push")
            await client.upload_blob(ep, ref.repository, digest, store.blobs.path(digest), on_bytes)
            progress(ProgressEvent(digest, Status.PUSHED, size, size))

    await run_all([one(digest, size) for digest, size in dict(blobs).items()])
    body = await store.blobs.read(image.digest)
    digest = await client.put_manifest(ep, ref, ref.tag or image.digest, body, image.media_type)
    log.info("image.pushed", ref=str(ref), digest=digest)
    return digest
