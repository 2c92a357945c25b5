"""Author image content locally: layer blobs from tar streams, configs, manifests (for
`docker build`-like images and `docker load` archives; not compose files)."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dockyard.agent.images.blobs import BlobSink, BlobStore
from dockyard.agent.images.content import canonical_json
from dockyard.agent.images.models import ImageConfig, Layer
from dockyard.agent.images.unpack import open_layer
from dockyard.agent.images.unpack_limits import Budget
from dockyard.common.distribution.media import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
)
from dockyard.common.distribution.platform import Platform

__all__ = [
    "Compression",
    "ImageSpec",
    "LayerWriter",
    "layer_from_tar",
    "oci_manifest",
    "put_blob",
    "write_image",
]

Compression = Literal["gzip", "none"]


class LayerWriter:
    """Writes one layer blob (blocking): a tar stream, hashed for its diff id,
    optionally gzip'd, into the blob store.

    Use `tar` to add members, or `write` for an existing uncompressed tar stream,
    then `close()` for the `Layer`.
    """

    def __init__(self, blobs: BlobStore, compression: Compression = "gzip", level: int = 6) -> None:
        self._sink: BlobSink = blobs.sink(what="new layer")
        self._gzip = (
            gzip.GzipFile(fileobj=self._sink, mode="wb", compresslevel=level, mtime=0)
            if compression == "gzip"
            else None
        )
        self._media_type = OCI_LAYER_GZIP if compression == "gzip" else OCI_LAYER_TAR
        self._diff = hashlib.sha256()
        self._tar: tarfile.TarFile | None = None

    @property
    def tar(self) -> tarfile.TarFile:
        """A PAX tar writer into this layer (opened on first use)."""
        if self._tar is None:
            self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
                fileobj=self,
                mode="w|",  # type: ignore[call-overload]
                format=tarfile.PAX_FORMAT,
            )
        return self._tar

    def write(self, data: bytes) -> int:
        """Append uncompressed tar bytes."""
        self._diff.update(data)
        if self._gzip is not None:
            self._gzip.write(data)
        else:
            self._sink.write(data)
        return len(data)

    def close(self) -> Layer:
        """Finish the tar and the blob; returns the stored layer."""
        try:
            if self._tar is not None:
                self._tar.close()
            if self._gzip is not None:
                self._gzip.close()
            size = self._sink.written
            digest = self._sink.commit()
        except BaseException:
            self._sink.discard()
            raise
        return Layer(digest, size, self._media_type, "sha256:" + self._diff.hexdigest())

    def discard(self) -> None:
        """Abandon the layer; nothing is stored."""
        if self._tar is not None:  # its stream would write its end blocks when collected
            stream = self._tar.fileobj
            for left in (self._tar, stream) if stream is not None else (self._tar,):
                setattr(left, "closed", True)  # noqa: B010 - tarfile cannot abandon a stream
        self._sink.discard()


def layer_from_tar(
    blobs: BlobStore,
    tar_path: Path,
    compression: Compression = "gzip",
    budget: Budget | None = None,
) -> Layer:
    """Store a filesystem tarball (plain, gzip or zstd) as a layer blob; blocking.

    ``budget`` bounds the uncompressed stream (a compressed tarball may be a bomb): past
    it, a LayerError naming the limit, and nothing is kept."""
    writer = LayerWriter(blobs, compression)
    try:
        with open_layer(tar_path) as stream:
            while chunk := stream.read(1 << 20):
                if budget is not None:
                    budget.spend_bytes(len(chunk), tar_path.name)
                writer.write(chunk)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


@dataclass
class ImageSpec:
    """What goes into an image config besides its layers."""

    config: ImageConfig = field(default_factory=ImageConfig)
    platform: Platform = field(default_factory=Platform)
    created: str = ""
    history: list[str] = field(default_factory=list)


def write_image(
    blobs: BlobStore, layers: list[Layer], spec: ImageSpec, held: set[str] | None = None
) -> str:
    """Store an OCI config and manifest for `layers`; returns the manifest digest.

    Blocking (small writes); layers must already be stored. The new digests are
    added to `held` (a store lease) so a concurrent gc keeps them.
    """
    created = spec.created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config: dict[str, Any] = {
        "architecture": spec.platform.architecture,
        "os": spec.platform.os,
        "created": created,
        "config": spec.config.to_oci(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": created,
                "created_by": spec.history[i] if i < len(spec.history) else "dockyard build",
            }
            for i in range(len(layers))
        ],
    }
    if spec.platform.variant:
        config["variant"] = spec.platform.variant
    config_bytes = canonical_json(config)
    held = held if held is not None else set()
    config_digest = put_blob(blobs, config_bytes)
    held.add(config_digest)
    digest = put_blob(blobs, canonical_json(oci_manifest(config_digest, len(config_bytes), layers)))
    held.add(digest)
    return digest


def oci_manifest(config_digest: str, config_size: int, layers: Sequence[Layer]) -> dict[str, Any]:
    """An OCI image manifest of a config blob and `layers`, bottom layer first."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }


def put_blob(blobs: BlobStore, data: bytes) -> str:
    """Store `data` as a blob (an image's config or manifest); its digest."""
    sink = blobs.sink(what="image content")
    try:
        sink.write(data)
        return sink.commit()
    except BaseException:
        sink.discard()
        raise
