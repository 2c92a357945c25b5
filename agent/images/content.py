"""Reading and writing image content JSON: manifests, configs, atomic JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dockyard.agent.images.blobs import store_error
from dockyard.agent.images.errors import ImageStoreError
from dockyard.agent.images.models import Image, ImageConfig, Layer
from dockyard.common.atomic_file import write_atomic
from dockyard.common.distribution.media import INDEX_TYPES, MANIFEST_TYPES, OCI_MANIFEST
from dockyard.common.distribution.platform import Platform

__all__ = [
    "canonical_json",
    "describe_image",
    "manifest_media_type",
    "parse_json",
    "write_json_atomic",
]


def canonical_json(value: Any) -> bytes:
    """Compact, key-sorted JSON bytes (stable digests for content we make)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object, naming `what` when it is not one.

    Raises:
        ImageStoreError: not valid JSON or not an object.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageStoreError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImageStoreError(f"{what} is not a JSON object")
    return value


def manifest_media_type(manifest: dict[str, Any], header: str | None = None) -> str:
    """The media type of a manifest or index, from its body, else a header."""
    media_type = manifest.get("mediaType") or header or ""
    if media_type in MANIFEST_TYPES or media_type in INDEX_TYPES:
        return str(media_type)
    if "manifests" in manifest:
        return "application/vnd.oci.image.index.v1+json"
    if "config" in manifest and "layers" in manifest:
        return OCI_MANIFEST
    raise ImageStoreError(f"unsupported manifest media type {media_type!r}")


def describe_image(
    digest: str, manifest: dict[str, Any], config: dict[str, Any], references: tuple[str, ...] = ()
) -> Image:
    """Build an `Image` from its manifest and config JSON.

    Raises:
        ImageStoreError: the manifest and config disagree (layer count, missing fields).
    """
    media_type = manifest_media_type(manifest)
    if media_type not in MANIFEST_TYPES:
        raise ImageStoreError(f"{digest} is an index, not an image manifest")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    layers = manifest.get("layers") or []
    if len(diff_ids) != len(layers):
        raise ImageStoreError(
            f"image {digest}: manifest has {len(layers)} layers but config has "
            f"{len(diff_ids)} diff ids"
        )
    try:
        return Image(
            digest=digest,
            config_digest=manifest["config"]["digest"],
            media_type=media_type,
            layers=tuple(
                Layer(d["digest"], int(d["size"]), d["mediaType"], diff_id)
                for d, diff_id in zip(layers, diff_ids, strict=True)
            ),
            config=ImageConfig.from_oci(config.get("config") or {}),
            created=str(config.get("created") or ""),
            platform=Platform(
                os=config.get("os") or "linux",
                architecture=config.get("architecture") or "amd64",
                variant=config.get("variant"),
            ),
            references=references,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageStoreError(f"image {digest}: malformed manifest: {exc!r}") from exc


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to `path` atomically (temp file, fsync, rename, fsync dir); blocking."""
    data = json.dumps(value, indent=1, sort_keys=True).encode()
    try:
        write_atomic(path, data, mode=0o600, make_parent=False)
    except OSError as exc:
        raise store_error(exc, str(path)) from exc
