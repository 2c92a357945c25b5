"""`docker save` / OCI image-layout tarballs in and out, and `docker import`.

`load` reads either format (an OCI layout wins when a tarball has both, as ours
do); `save` writes both an OCI layout (`oci-layout`, `index.json`, `blobs/`) and
docker's `manifest.json` + `repositories` over the same blobs.

An archive is read with bounds, as a pull is: at most `MAX_ARCHIVE_MEMBERS` entries,
each member's declared size at most the store's free space (and the layer byte limit),
checked before tarfile reads past it (in a compressed archive, skipping a member means
decompressing it), and the JSON documents (`manifest.json`, `index.json`, manifests,
indexes, configs) at most `MAX_DOCUMENT_BYTES`, containerd's limit. An import's
uncompressed stream spends the layer budget (`UnpackLimits`).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.images.authoring import ImageSpec, layer_from_tar, write_image
from dockyard.agent.images.content import canonical_json, parse_json
from dockyard.agent.images.errors import ImageStoreError, InvalidReference
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Image, ImageConfig
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.transfer import select_platform
from dockyard.agent.images.unpack import BoundedTarInfo
from dockyard.common.distribution.media import (
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    digest_hex,
)
from dockyard.common.distribution.platform import Platform

__all__ = ["MAX_ARCHIVE_MEMBERS", "MAX_DOCUMENT_BYTES", "import_rootfs", "load", "save"]

log = structlog.get_logger(__name__)

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
MAX_DOCUMENT_BYTES = 4 << 20
"""manifest.json, index.json, a manifest, an index or a config: containerd's 4 MiB."""
MAX_ARCHIVE_MEMBERS = 100_000
"""Entries in an image archive (tarfile keeps each header): 128 layers each of 700 images."""


@dataclass
class _Loaded:
    manifest: str
    refs: list[Reference] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


async def load(store: ImageStore, tar_path: Path, platform: Platform | None = None) -> list[Image]:
    """Load a `docker save` or OCI-layout tarball (plain or compressed) into the store.

    Returns:
        The loaded images, named by the tags the tarball carries.

    Raises:
        ImageStoreError: the tarball is neither format or misses content.
        DigestMismatch: a blob does not match its digest.
    """
    wanted = platform or Platform()
    await asyncio.to_thread(_check_regular_file, tar_path)
    with store.lease() as lease:
        loaded = await asyncio.to_thread(_read_archive, store, tar_path, wanted, lease.digests)
        images = [await store.commit(item.manifest, item.refs, item.extra) for item in loaded]
    log.info("image.loaded", path=str(tar_path), count=len(images))
    return images


def _check_regular_file(path: Path) -> None:
    """Refuse a FIFO, a device or a directory: reading one would block or never end."""
    mode = path.stat().st_mode  # FileNotFoundError is the caller's "no such file"
    if not stat.S_ISREG(mode):
        raise ImageStoreError(f"{path} is not a regular file")


def _read_archive(
    store: ImageStore, tar_path: Path, platform: Platform, held: set[str]
) -> list[_Loaded]:
    try:
        with tarfile.open(tar_path, "r:*", tarinfo=BoundedTarInfo) as tar:
            reader = _ArchiveReader(store, tar, held)
            if "oci-layout" in reader.members and "index.json" in reader.members:
                return reader.read_oci(platform)
            if "manifest.json" in reader.members:
                return reader.read_docker()
    except (tarfile.TarError, OSError) as exc:
        raise ImageStoreError(f"cannot read image archive {tar_path}: {exc}") from exc
    raise ImageStoreError(
        f"{tar_path} is neither a docker save tarball (manifest.json) nor an OCI "
        "image layout (oci-layout + index.json)"
    )


class _ArchiveReader:
    def __init__(self, store: ImageStore, tar: tarfile.TarFile, held: set[str]) -> None:
        self.store = store
        self.tar = tar
        self.held = held
        self.members = _scan(store, tar)

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ImageStoreError(f"image archive: {name} is not valid JSON: {exc}") from None

    def read(self, name: str) -> bytes:
        """A JSON document of the archive, read up to `MAX_DOCUMENT_BYTES`."""
        member = self.members.get(posixpath.normpath(name))
        if member is not None and member.size > MAX_DOCUMENT_BYTES:
            raise ImageStoreError(
                f"image archive: {name} declares {member.size} bytes, "
                f"over the {MAX_DOCUMENT_BYTES}-byte limit on a document"
            )
        with self._open(name) as handle:
            data: bytes = handle.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:  # a link's target may be larger than itself
            raise ImageStoreError(
                f"image archive: {name} is over the {MAX_DOCUMENT_BYTES}-byte limit on a document"
            )
        return data

    def document(self, digest: str, what: str) -> Any:
        """A stored manifest, index or config, parsed; refused over `MAX_DOCUMENT_BYTES`."""
        size = self.store.blobs.size(digest)
        if size > MAX_DOCUMENT_BYTES:
            raise ImageStoreError(
                f"image archive: {what} is {size} bytes, over the "
                f"{MAX_DOCUMENT_BYTES}-byte limit on a document"
            )
        return parse_json(self.store.blobs.read_bytes(digest), what)

    def _open(self, name: str) -> Any:
        member = self.members.get(posixpath.normpath(name))
        if member is None:
            raise ImageStoreError(f"image archive has no file {name!r}")
        try:
            handle = self.tar.extractfile(member)
        except KeyError:  # a link: tarfile resolves it among the archive's own members
            raise ImageStoreError(
                f"image archive: {name!r} links to {member.linkname!r}, which is not in the archive"
            ) from None
        if handle is None:
            raise ImageStoreError(f"image archive has no file {name!r}")
        return handle

    def ingest(self, name: str, expected: str | None = None) -> str:
        if expected is not None:
            self.held.add(expected)
            if self.store.blobs.has(expected):
                return expected
        with self._open(name) as handle:
            digest = self.store.blobs.ingest(handle, expected, f"{name} of the image archive")
        self.held.add(digest)
        return digest

    # ----- OCI image layout ---------------------------------------------------------

    def blob(self, digest: str) -> str:
        return self.ingest(f"blobs/sha256/{digest_hex(digest)}", digest)

    def read_oci(self, platform: Platform) -> list[_Loaded]:
        index = self.json("index.json")
        by_manifest: dict[str, _Loaded] = {}
        for desc in index.get("manifests") or []:
            extra: list[str] = []
            digest = self.blob(desc["digest"])
            if desc.get("mediaType") in INDEX_TYPES:
                nested = self.document(digest, f"index {digest}")
                extra.append(digest)
                digest = self.blob(select_platform(nested, platform, f"index {digest}")["digest"])
            manifest = self.document(digest, f"manifest {digest}")
            self.blob(manifest["config"]["digest"])
            for layer in manifest.get("layers") or []:
                self.blob(layer["digest"])
            item = by_manifest.setdefault(digest, _Loaded(digest))
            item.extra.extend(extra)
            ref = _annotated_ref(desc.get("annotations") or {})
            if ref is not None:
                item.refs.append(ref)
        return list(by_manifest.values())

    # ----- docker save ------------------------------------------------------------------

    def read_docker(self) -> list[_Loaded]:
        loaded = []
        for entry in self.json("manifest.json"):
            config_bytes = self.read(entry["Config"])
            config_digest = self.ingest(entry["Config"])
            diff_ids = (parse_json(config_bytes, "image config").get("rootfs") or {}).get(
                "diff_ids"
            ) or []
            if len(diff_ids) != len(entry["Layers"]):
                raise ImageStoreError(
                    f"docker archive: {entry['Config']} lists {len(diff_ids)} diff ids for "
                    f"{len(entry['Layers'])} layers"
                )
            layers = []
            for name in entry["Layers"]:
                digest = self.ingest(name)
                layers.append(
                    {
                        "mediaType": _layer_type(self.store.blobs.path(digest)),
                        "digest": digest,
                        "size": self.store.blobs.size(digest),
                    }
                )
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
                "layers": layers,
            }
            sink = self.store.blobs.sink(what="manifest of a docker archive image")
            sink.write(canonical_json(manifest))
            digest = sink.commit()
            self.held.add(digest)
            refs = [parse_reference(tag) for tag in entry.get("RepoTags") or []]
            loaded.append(_Loaded(digest, refs))
        return loaded


def _scan(store: ImageStore, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's files and links by name; each member's declared size and the member
    count checked before tarfile reads on past it."""
    free = shutil.disk_usage(store.blobs.tmp_dir).free
    limit, why = min(
        (free, f"the {free} bytes free in the image store"),
        (store.limits.max_bytes, f"the {store.limits.max_bytes}-byte limit"),
    )
    members: dict[str, tarfile.TarInfo] = {}
    count = 0
    while (member := tar.next()) is not None:
        count += 1
        if count > MAX_ARCHIVE_MEMBERS:
            raise ImageStoreError(
                f"image archive: more than {MAX_ARCHIVE_MEMBERS} entries, over the limit"
            )
        if member.isfile() and member.size > limit:
            raise ImageStoreError(
                f"image archive: {member.name[:200]!r} declares {member.size} bytes, over {why}"
            )
        if member.isfile() or member.islnk() or member.issym():
            members[posixpath.normpath(member.name)] = member
    return members


def _layer_type(path: Path) -> str:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"\x1f\x8b"):
        return OCI_LAYER_GZIP
    if magic == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return OCI_LAYER_TAR


def _annotated_ref(annotations: dict[str, str]) -> Reference | None:
    for key in (CONTAINERD_NAME, OCI_REF_NAME):
        name = annotations.get(key)
        if not name or (key == OCI_REF_NAME and not any(c in name for c in ":/@")):
            continue  # a bare tag names no repository
        try:
            return parse_reference(name)
        except InvalidReference:
            log.warning("archive.bad_image_name", name=name)
    return None


async def save(store: ImageStore, refs: Sequence[str], tar_path: Path) -> None:
    """Write images to a tarball that `docker load` and `load` both accept.

    Args:
        store: The store holding the images.
        refs: References or image ids; tags among them are kept in the tarball.
        tar_path: Output file (written to a temp file, then renamed).
    """
    named: dict[str, list[Reference]] = {}
    images: dict[str, Image] = {}
    for text in refs:
        image = store.resolve(text)
        images[image.digest] = image
        names = named.setdefault(image.digest, [])
        try:
            ref = parse_reference(text)
        except InvalidReference:
            ref = None
        if ref is not None and ref.tag and str(ref) in image.references:
            names.append(ref)
    await asyncio.to_thread(_write_archive, store, list(images.values()), named, tar_path)
    log.info("image.saved", path=str(tar_path), count=len(images))


def _write_archive(
    store: ImageStore, images: list[Image], named: dict[str, list[Reference]], tar_path: Path
) -> None:
    fd, tmp = tempfile.mkstemp(dir=tar_path.parent, prefix=f".{tar_path.name}.")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            written: set[str] = set()
            index: list[dict[str, Any]] = []
            docker: list[dict[str, Any]] = []
            repos: dict[str, dict[str, str]] = {}
            for image in images:
                for digest in [
                    image.digest,
                    image.config_digest,
                    *(layer.digest for layer in image.layers),
                ]:
                    if digest not in written:
                        tar.add(store.blobs.path(digest), f"blobs/sha256/{digest_hex(digest)}")
                        written.add(digest)
                refs = named.get(image.digest, [])
                desc = {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": store.blobs.size(image.digest),
                }
                index.extend(
                    [
                        {
                            **desc,
                            "annotations": {CONTAINERD_NAME: str(ref), OCI_REF_NAME: ref.tag or ""},
                        }
                        for ref in refs
                    ]
                    or [desc]
                )
                docker.append(
                    {
                        "Config": f"blobs/sha256/{digest_hex(image.config_digest)}",
                        "RepoTags": [ref.familiar() for ref in refs],
                        "Layers": [
                            f"blobs/sha256/{digest_hex(layer.digest)}" for layer in image.layers
                        ],
                    }
                )
                for ref in refs:
                    top = digest_hex(image.layers[-1].digest) if image.layers else ""
                    repos.setdefault(ref.familiar_name(), {})[ref.tag or "latest"] = top
            _add_bytes(
                tar,
                "index.json",
                canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
            )
            _add_bytes(tar, "manifest.json", json.dumps(docker).encode())
            _add_bytes(tar, "repositories", json.dumps(repos).encode())
        os.replace(tmp, tar_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


async def import_rootfs(
    store: ImageStore, rootfs_tar: Path, ref: Reference, config: ImageConfig | None = None
) -> Image:
    """Make a one-layer image from a filesystem tarball, as `docker import` does."""
    await asyncio.to_thread(_check_regular_file, rootfs_tar)
    with store.lease() as lease:
        budget = await asyncio.to_thread(store.limits.budget_at, store.blobs.tmp_dir)
        layer = await asyncio.to_thread(layer_from_tar, store.blobs, rootfs_tar, "gzip", budget)
        lease.add(layer.digest, layer.diff_id)
        spec = ImageSpec(config=config or ImageConfig(), history=[f"import {rootfs_tar.name}"])
        digest = await asyncio.to_thread(write_image, store.blobs, [layer], spec, lease.digests)
        return await store.commit(digest, [ref])
