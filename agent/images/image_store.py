"""The local image store: blobs, image records, references and layer snapshots.

Layout under the root (the agent's `<state>/images`):

    blobs/sha256/<hex>        manifests, configs and layer blobs
    snapshots/<diff-id hex>/  each layer unpacked once, read-only by convention
    images/<manifest hex>.json image records
    references.json           `registry/repo:tag` and `registry/repo@digest` -> manifest
    tmp/                      in-flight writes (same filesystem, so renames are atomic)

Snapshots are reference counted by the image records that list them; `gc()`
removes what no image references and no in-flight transfer holds (a lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.content import describe_image, parse_json, write_json_atomic
from dockyard.agent.images.errors import DigestMismatch, ImageNotFound, ImageStoreError
from dockyard.agent.images.models import Image, ImageConfig, Layer
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.unpack import unpack_layer
from dockyard.agent.images.unpack_limits import UnpackLimits
from dockyard.common.distribution.media import digest_hex
from dockyard.common.distribution.platform import Platform

__all__ = ["GcResult", "ImageStore", "Lease"]

log = structlog.get_logger(__name__)


@dataclass
class GcResult:
    """What a garbage collection removed."""

    blobs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)


@dataclass
class Lease:
    """Digests an in-flight transfer holds; `gc()` keeps them."""

    digests: set[str] = field(default_factory=set)

    def add(self, *digests: str) -> None:
        """Hold more blob digests or diff ids."""
        self.digests.update(digests)


class ImageStore:
    """Content-addressed image storage rooted at one directory.

    Args:
        root: Directory that holds everything (created if missing).
        limits: The bounds on what one layer unpacks to (bytes, entries).
    """

    def __init__(self, root: Path, limits: UnpackLimits | None = None) -> None:
        self.root = root
        self.limits = limits or UnpackLimits()
        self.blobs = BlobStore(root)
        self.snapshots_dir = root / "snapshots"
        self.records_dir = root / "images"
        self.refs_path = root / "references.json"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        # Layers carry world-writable directories (every image's /tmp is 1777): the host's
        # other users must not reach them, nor read private images' blobs.
        os.chmod(root, 0o700)
        self._lock = asyncio.Lock()
        self._unpacking: dict[str, asyncio.Lock] = {}
        self._leases: list[Lease] = []
        self._records: dict[str, Image] = {}
        self._refs: dict[str, str] = {}
        self._extras: dict[str, tuple[str, ...]] = {}
        self._load()

    # ----- loading -------------------------------------------------------------

    def _load(self) -> None:
        for leftover in self.blobs.tmp_dir.iterdir():  # interrupted writes of a past run
            _remove_path(leftover)
        for leftover in self.snapshots_dir.glob(".tmp-*"):
            _remove_path(leftover)
        for path in self.records_dir.glob("*.json"):
            record = parse_json(path.read_bytes(), f"image record {path}")
            image = _image_from_record(record)
            self._records[image.digest] = image
            self._extras[image.digest] = tuple(record.get("extra_blobs", ()))
        if self.refs_path.exists():
            refs = parse_json(self.refs_path.read_bytes(), str(self.refs_path))
            self._refs = {k: v for k, v in refs.get("refs", {}).items() if v in self._records}

    # ----- lookups ---------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every local image, with the references that name it."""
        return [self._with_refs(image) for image in self._records.values()]

    def get(self, digest: str) -> Image:
        """The image whose manifest digest is `digest`.

        Raises:
            ImageNotFound: no such image.
        """
        image = self._records.get(digest)
        if image is None:
            raise ImageNotFound(f"No such image: {digest}")
        return self._with_refs(image)

    def resolve(self, text: str | Reference) -> Image:
        """Find a local image by reference, manifest digest, or (short) image id.

        Raises:
            ImageNotFound: nothing local answers to `text`.
            InvalidReference: `text` is neither an id nor a valid reference.
        """
        if isinstance(text, str):
            found = self._by_id(text)
            if found is not None:
                return self._with_refs(found)
            ref = parse_reference(text)
        else:
            ref = text
        digest = self._refs.get(str(ref))
        if digest is None and ref.digest is not None:
            digest = self._refs.get(f"{ref.name}@{ref.digest}")
            if digest is None and ref.digest in self._records:
                digest = ref.digest
        if digest is None:
            raise ImageNotFound(f"No such image: {ref.familiar()}")
        return self.get(digest)

    def _by_id(self, text: str) -> Image | None:
        hex_part = text.removeprefix("sha256:")
        if len(hex_part) < 12 or any(c not in "0123456789abcdef" for c in hex_part):
            return None
        matches = {
            image.digest
            for image in self._records.values()
            if digest_hex(image.config_digest).startswith(hex_part)
            or digest_hex(image.digest).startswith(hex_part)
        }
        if len(matches) > 1:
            raise ImageStoreError(f"image id {text!r} is ambiguous ({len(matches)} images)")
        return self._records[matches.pop()] if matches else None

    def _with_refs(self, image: Image) -> Image:
        refs = tuple(sorted(r for r, d in self._refs.items() if d == image.digest))
        return replace(image, references=refs)

    # ----- snapshots -------------------------------------------------------------

    def snapshot_path(self, diff_id: str) -> Path:
        """The directory a layer with this diff id is unpacked into."""
        return self.snapshots_dir / digest_hex(diff_id)

    def lower_dirs(self, image: Image) -> list[Path]:
        """Snapshot dirs of `image`, top layer first, as overlayfs `lowerdir` wants."""
        return [self.snapshot_path(layer.diff_id) for layer in reversed(image.layers)]

    def has_snapshot(self, diff_id: str) -> bool:
        """Whether a layer is already unpacked."""
        return self.snapshot_path(diff_id).is_dir()

    async def ensure_snapshot(self, layer: Layer) -> Path:
        """Unpack a stored layer blob once; later calls return the same directory.

        Raises:
            DigestMismatch: the unpacked content does not hash to `layer.diff_id`.
            LayerError: the tarball is unsafe or malformed.
        """
        lock = self._unpacking.setdefault(layer.diff_id, asyncio.Lock())
        async with lock:
            target = self.snapshot_path(layer.diff_id)
            if not target.is_dir():
                await asyncio.to_thread(self._unpack, layer, target)
        return target

    def _unpack(self, layer: Layer, target: Path) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.snapshots_dir, prefix=".tmp-"))
        try:
            tmp.chmod(0o755)  # the root's mode, unless the tar carries "./"; never 0700
            diff_id = unpack_layer(self.blobs.path(layer.digest), tmp, limits=self.limits)
            if diff_id != layer.diff_id:
                raise DigestMismatch(
                    f"layer {layer.digest}: uncompressed content hashes to {diff_id}, "
                    f"the image config says {layer.diff_id}; not kept"
                )
            tmp.rename(target)
        except BaseException:
            _remove_path(tmp)
            raise
        log.debug("layer.unpacked", layer=layer.digest, snapshot=str(target))

    def snapshot_refcounts(self) -> Counter[str]:
        """How many images use each snapshot (keyed by diff id)."""
        return Counter(
            layer.diff_id
            for image in self._records.values()
            for layer in {lay.diff_id: lay for lay in image.layers}.values()
        )

    # ----- records ---------------------------------------------------------------

    async def commit(
        self, manifest_digest: str, refs: Iterable[Reference] = (), extra_blobs: Iterable[str] = ()
    ) -> Image:
        """Record an image whose manifest, config and layer blobs are stored.

        Unpacks layers that are not unpacked yet, then writes the record and points
        `refs` at it (moving them away from any other image).

        Args:
            manifest_digest: Digest of the stored image manifest.
            refs: References to name the image by.
            extra_blobs: More blobs the image keeps (an index it was picked from).
        """
        manifest = parse_json(await self.blobs.read(manifest_digest), f"manifest {manifest_digest}")
        config_digest = manifest.get("config", {}).get("digest", "")
        config = parse_json(await self.blobs.read(config_digest), f"config {config_digest}")
        image = describe_image(manifest_digest, manifest, config)
        for layer in image.layers:
            if not self.blobs.has(layer.digest) and not self.has_snapshot(layer.diff_id):
                raise ImageStoreError(f"layer {layer.digest} of {manifest_digest} is missing")
            await self.ensure_snapshot(layer)
        record = _image_to_record(image, sorted(set(extra_blobs)))
        async with self._lock:
            await asyncio.to_thread(
                write_json_atomic, self.records_dir / f"{digest_hex(image.digest)}.json", record
            )
            self._records[image.digest] = image
            self._extras[image.digest] = tuple(record["extra_blobs"])
            for ref in refs:
                self._refs[str(ref)] = image.digest
            await self._save_refs()
        log.info("image.stored", digest=image.digest, refs=[str(r) for r in refs])
        return self.get(image.digest)

    async def tag(self, image: Image, ref: Reference) -> None:
        """Point `ref` at `image`."""
        async with self._lock:
            self._refs[str(ref)] = image.digest
            await self._save_refs()

    async def untag(self, ref: Reference) -> str | None:
        """Remove a reference; returns the manifest digest it named, if any."""
        async with self._lock:
            digest = self._refs.pop(str(ref), None)
            if digest is not None:
                await self._save_refs()
            return digest

    async def delete(self, digest: str) -> list[str]:
        """Delete an image record and every reference to it; returns those references."""
        async with self._lock:
            removed = sorted(r for r, d in self._refs.items() if d == digest)
            for ref in removed:
                del self._refs[ref]
            await self._save_refs()
            self._records.pop(digest, None)
            self._extras.pop(digest, None)
            path = self.records_dir / f"{digest_hex(digest)}.json"
            await asyncio.to_thread(path.unlink, True)
            return removed

    def is_tagged(self, digest: str) -> bool:
        """Whether a tag (not only a `name@digest` reference) names the image."""
        return any(d == digest and "@" not in ref for ref, d in self._refs.items())

    async def _save_refs(self) -> None:
        await asyncio.to_thread(write_json_atomic, self.refs_path, {"refs": dict(self._refs)})

    # ----- leases and gc -------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """Hold digests an in-flight transfer is writing so `gc()` keeps them."""
        lease = Lease()
        self._leases.append(lease)
        try:
            yield lease
        finally:
            self._leases.remove(lease)

    def _kept(self) -> tuple[set[str], set[str]]:
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        for digest, image in self._records.items():
            record_extra = self._extras.get(digest, ())
            blobs.update({digest, image.config_digest, *record_extra})
            blobs.update(layer.digest for layer in image.layers)
            diff_ids.update(layer.diff_id for layer in image.layers)
        for lease in self._leases:
            blobs.update(lease.digests)
            diff_ids.update(lease.digests)
        return blobs, diff_ids

    async def gc(self) -> GcResult:
        """Delete blobs and snapshots that no image (and no lease) references."""
        async with self._lock:
            blobs, diff_ids = self._kept()
            result = GcResult()
            for digest in sorted(self.blobs.digests() - blobs):
                await asyncio.to_thread(self.blobs.delete, digest)
                result.blobs.append(digest)
            for path in sorted(self.snapshots_dir.iterdir()):
                diff_id = "sha256:" + path.name
                if path.name.startswith(".") or diff_id in diff_ids:
                    continue
                await asyncio.to_thread(_remove_path, path)
                result.snapshots.append(diff_id)
        log.info("image.gc", blobs=len(result.blobs), snapshots=len(result.snapshots))
        return result


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _image_to_record(image: Image, extra_blobs: list[str]) -> dict[str, Any]:
    record = asdict(image)
    record.pop("references")
    record["extra_blobs"] = extra_blobs
    return record


def _image_from_record(record: dict[str, Any]) -> Image:
    try:
        return Image(
            digest=record["digest"],
            config_digest=record["config_digest"],
            media_type=record["media_type"],
            layers=tuple(Layer(**layer) for layer in record["layers"]),
            config=ImageConfig(**record["config"]),
            created=record["created"],
            platform=Platform(**record["platform"]),
        )
    except (KeyError, TypeError) as exc:
        raise ImageStoreError(f"corrupt image record: {exc!r}") from exc
