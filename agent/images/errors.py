"""Errors raised by the image subsystem; each message says what failed and why.

Registry and verification errors come from `dockyard.common.distribution.errors`
and are re-exported, so the agent catches every image error from one place.
"""

from __future__ import annotations

from dockyard.common.distribution.errors import (
    DigestMismatch,
    ImageError,
    ManifestNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    SizeMismatch,
)
from dockyard.common.reference import InvalidReference

__all__ = [
    "DigestMismatch",
    "ImageError",
    "ImageNotFound",
    "ImageStoreError",
    "InvalidReference",
    "LayerError",
    "ManifestNotFound",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachable",
    "SizeMismatch",
]


class ImageStoreError(ImageError):
    """The local store could not keep or read content (disk full, corrupt record)."""


class ImageNotFound(ImageError):
    """No local image answers to a reference."""


class LayerError(ImageStoreError):
    """A layer tarball is unsafe or malformed and was not unpacked."""
