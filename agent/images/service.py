"""`ImageService`: the image API the agent calls (pull, push, list, rm, load, ...)."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from dockyard.agent.images import archive
from dockyard.agent.images.errors import ImageError, InvalidReference
from dockyard.agent.images.image_store import GcResult, ImageStore
from dockyard.agent.images.models import Image, ImageConfig, ImageSummary
from dockyard.agent.images.peer_fetch import PeerFetcher, PeerSources
from dockyard.agent.images.progress import ProgressCallback, ignore_progress
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.transfer import BlobObserver, pull_image, push_image
from dockyard.agent.images.unpack_limits import UnpackLimits
from dockyard.common.distribution.auth import Credentials
from dockyard.common.distribution.registry import RegistryClient, RegistryConfig
from dockyard.common.taskscope import TaskScope

__all__ = ["ImageService"]

log = structlog.get_logger(__name__)


def _ref(value: str | Reference) -> Reference:
    return value if isinstance(value, Reference) else parse_reference(value)


class ImageService:
    """The node's images: a local store plus registries.

    Args:
        root: Store directory (the agent's `<state dir>/images`).
        registry: Mirrors, insecure registries, credentials file, concurrency.
        limits: The bounds on what one layer unpacks to (bytes, entries).
        on_blob: Told of every blob a pull stored (source, bytes, seconds): the metrics.
    """

    def __init__(
        self,
        root: Path,
        registry: RegistryConfig | None = None,
        limits: UnpackLimits | None = None,
        on_blob: BlobObserver | None = None,
    ) -> None:
        self.store = ImageStore(root, limits)
        self._on_blob = on_blob
        self.registry = registry or RegistryConfig()
        self._pulls: dict[str, _SharedPull] = {}
        self._transfers = TaskScope("image-pulls")  # the shared pulls, until close()
        self.peer_fetcher: PeerFetcher | None = None
        """Fetches blobs from other nodes (set by an agent in a cluster)."""

    async def pull(
        self,
        ref: str | Reference,
        progress: ProgressCallback = ignore_progress,
        peers: Sequence[str] = (),
        credentials: Mapping[str, Credentials] | None = None,
    ) -> Image:
        """Pull an image (mirrors first for docker.io) and name it `ref`; the blobs it
        lacks are asked of the agents at `peers` (host:port) first, when `peer_fetcher` is set.

        Concurrent pulls of the same reference with the same `credentials` (registry ->
        login, over the configured file's) share one transfer (the later callers get no
        progress events); it is cancelled when every caller is.

        Raises:
            ManifestNotFound: the registry has no such image.
            RegistryUnreachable: the registry did not answer after bounded retries.
            DigestMismatch: content did not match its digest; nothing was stored.
        """
        reference = _ref(ref)
        key = str(reference) + "".join(
            f"|{registry}=" + hashlib.sha256(f"{c.username}\0{c.password}".encode()).hexdigest()
            for registry, c in sorted((credentials or {}).items())
        )
        if key not in self._pulls:
            await self._transfers.open()  # nothing once open
        shared = self._pulls.get(key)  # another caller's, maybe started meanwhile
        if shared is None:
            sources = self.peer_fetcher.sources(peers) if self.peer_fetcher else None
            work = self._pull(reference, progress, sources, credentials)
            shared = _SharedPull(*self._transfers.submit(work, f"pull-{reference}"))
            self._pulls[key] = shared
            shared.task.add_done_callback(lambda _: self._pulls.pop(key, None))
        shared.waiters += 1
        try:
            return await asyncio.shield(shared.outcome)
        except asyncio.CancelledError:
            if shared.waiters == 1 and not shared.task.done():
                shared.task.cancel()  # the last caller gave up: stop and clean up
                await asyncio.wait([shared.task])
            raise
        finally:
            shared.waiters -= 1
            if shared.task.done() and self._pulls.get(key) is shared:
                del self._pulls[key]  # its done callback may not have run yet
            if not self._pulls:
                # No transfer under way: no holder task left pending for a service that
                # is dropped without close() (the next pull opens the scope again).
                await self._transfers.close_if_idle()

    async def close(self) -> None:
        """Cancel the pulls under way and wait for them (their callers get cancelled)."""
        await self._transfers.close()

    async def _pull(
        self,
        ref: Reference,
        progress: ProgressCallback,
        peers: PeerSources | None,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> Image:
        async with RegistryClient(self.registry, credentials) as client:
            return await pull_image(client, self.store, ref, progress, peers, self._on_blob)

    async def push(
        self,
        ref: str | Reference,
        progress: ProgressCallback = ignore_progress,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> str:
        """Push the local image named `ref` to its registry; returns the manifest digest.

        `credentials` (registry -> login) go over the configured credentials file's.
        """
        reference = _ref(ref)
        image = self.store.resolve(reference)
        async with RegistryClient(self.registry, credentials) as client:
            return await push_image(client, self.store, image, reference, progress)

    def list(self) -> list[ImageSummary]:
        """One row per tag (untagged images get one `<none>` row), newest first."""
        rows = []
        for image in self.store.images():
            refs: builtins.list[Reference | None] = [parse_reference(r) for r in image.references]
            tagged = [r for r in refs if r and r.tag and not r.digest]
            for ref in tagged or refs[:1] or [None]:
                rows.append(
                    ImageSummary(
                        repository=ref.familiar_name() if ref else "<none>",
                        tag=(ref.tag or "<none>") if ref and not ref.digest else "<none>",
                        digest=image.digest,
                        image_id=image.id,
                        size=image.size,
                        created=image.created,
                    )
                )
        return sorted(rows, key=lambda r: (r.created, r.repository, r.tag), reverse=True)

    def resolve(self, ref: str | Reference) -> Image:
        """The local image for a reference or (short) id.

        Raises:
            ImageNotFound: nothing local matches.
        """
        return self.store.resolve(ref)

    def inspect(self, ref: str | Reference) -> Image:
        """Same as `resolve`: the image with its layers, config and references."""
        return self.store.resolve(ref)

    async def tag(self, src: str | Reference, dst: str | Reference) -> None:
        """Name the image `src` also `dst`."""
        await self.store.tag(self.store.resolve(src), _ref(dst))

    async def remove(self, ref: str | Reference, force: bool = False) -> builtins.list[str]:
        """Untag, and delete the image once no reference is left (docker rmi).

        Removing by id deletes every reference, but needs `force` when there are
        several. Unreferenced blobs and snapshots are garbage-collected.

        Returns:
            Docker-style lines: `Untagged: busybox:latest`, `Deleted: sha256:...`.
        """
        image = self.store.resolve(ref)
        reference = _parse_or_none(ref)
        lines: list[str] = []
        if reference is not None and str(reference) in image.references:
            await self.store.untag(reference)
            lines.append(f"Untagged: {reference.familiar()}")
            if self.store.is_tagged(image.digest):
                return lines
        elif len(image.references) > 1 and not force:
            raise ImageError(
                f"conflict: unable to delete {image.id[7:19]} (must be forced) - image is "
                f"referenced in multiple repositories"
            )
        for name in await self.store.delete(image.digest):
            lines.append(f"Untagged: {parse_reference(name).familiar()}")
        lines.append(f"Deleted: {image.digest}")
        await self.store.gc()
        return lines

    async def gc(self) -> GcResult:
        """Delete blobs and snapshots no image uses."""
        return await self.store.gc()

    async def load(self, path: Path) -> builtins.list[Image]:
        """Load a `docker save` or OCI-layout tarball."""
        return await archive.load(self.store, path, self.registry.platform)

    async def save(self, refs: Sequence[str], path: Path) -> None:
        """Save images to a tarball that `docker load` and `load` accept."""
        await archive.save(self.store, refs, path)

    async def import_rootfs(
        self, path: Path, ref: str | Reference, config: ImageConfig | None = None
    ) -> Image:
        """Make a one-layer image from a filesystem tarball (docker import)."""
        return await archive.import_rootfs(self.store, path, _ref(ref), config)

    def lower_dirs(self, image: Image) -> builtins.list[Path]:
        """Snapshot directories of `image`, top layer first (overlayfs lowerdir order)."""
        return self.store.lower_dirs(image)

    def config(self, image: Image) -> ImageConfig:
        """The runtime config (Entrypoint, Cmd, Env, WorkingDir, User, ports, labels)."""
        return image.config


@dataclass
class _SharedPull:
    task: asyncio.Task[None]
    outcome: asyncio.Future[Image]
    waiters: int = 0


def _parse_or_none(ref: str | Reference) -> Reference | None:
    if isinstance(ref, Reference):
        return ref
    try:
        return parse_reference(ref)
    except InvalidReference:
        return None
