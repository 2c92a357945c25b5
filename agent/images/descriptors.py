"""The descriptors of a pulled manifest, checked before anything is downloaded.

A registry (or a peer) decides what a manifest says; every digest, size and count in it
is checked here, and each refusal names the field, so a hostile manifest gets a clear
error instead of a KeyError, and no blob is fetched for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dockyard.common.distribution.errors import ImageError, SizeMismatch
from dockyard.common.distribution.media import digest_hex
from dockyard.common.distribution.registry import MAX_CONFIG_BYTES

__all__ = ["MAX_LAYERS", "Descriptor", "check_diff_ids", "descriptor", "image_descriptors"]

MAX_LAYERS = 128
"""The most layers an image may have: each is a lower directory of a container's overlay
mount (Docker stops at 125)."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    digest: str
    size: int
    media_type: str


def descriptor(value: Any, what: str) -> Descriptor:
    """A checked descriptor: a sha256 digest, a byte count, a media type (may be "")."""
    if not isinstance(value, dict):
        raise ImageError(f"{what}: not a descriptor object; refused")
    digest = value.get("digest")
    try:
        digest_hex(digest if isinstance(digest, str) else "")
    except ValueError:
        raise ImageError(
            f"{what}: digest {str(digest)[:80]!r} is not sha256:<64 hex>; refused"
        ) from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(
            f"{what}: its descriptor declares size {size!r}, not a byte count; refused"
        )
    media_type = value.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ImageError(f"{what}: mediaType is not a string; refused")
    return Descriptor(str(digest), size, media_type)


def image_descriptors(manifest: dict[str, Any], what: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config's and the layers' descriptors of an image manifest.

    Raises:
        ImageError: a descriptor is malformed, or there are more than MAX_LAYERS layers.
        SizeMismatch: the config declares more than MAX_CONFIG_BYTES.
    """
    config = descriptor(manifest.get("config"), f"{what}: config")
    if config.size > MAX_CONFIG_BYTES:
        raise SizeMismatch(
            f"config {config.digest} of {what}: declared {config.size} bytes, "
            f"more than the limit of {MAX_CONFIG_BYTES} for a config; refused"
        )
    layers = manifest.get("layers") or []
    if not isinstance(layers, list):
        raise ImageError(f"{what}: layers is not a list; refused")
    if len(layers) > MAX_LAYERS:
        raise ImageError(
            f"{what}: {len(layers)} layers, more than the limit of {MAX_LAYERS}; refused"
        )
    return config, [descriptor(d, f"{what}: layers[{i}]") for i, d in enumerate(layers)]


def check_diff_ids(config: dict[str, Any], layers: list[Descriptor], what: str) -> list[str]:
    """The config's diff_ids, one per layer of the manifest."""
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError(f"{what}: rootfs.diff_ids is not a list of digests; refused")
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"{what}: the manifest has {len(layers)} layers but the config "
            f"{len(diff_ids)} diff_ids; refused"
        )
    for index, diff_id in enumerate(diff_ids):
        descriptor({"digest": diff_id, "size": 0}, f"{what}: rootfs.diff_ids[{index}]")
    return list(diff_ids)
