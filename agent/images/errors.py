"""Errors raised by the image subsystem; each message says what failed and why."""

from __future__ import annotations

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
]


class ImageError(Exception):
    """Base class of every error of the image subsystem."""


class ImageStoreError(ImageError):
    """The local store could not keep or read content (disk full, corrupt record)."""


class ImageNotFound(ImageError):
    """No local image answers to a reference."""


class LayerError(ImageStoreError):
    """A layer tarball is unsafe or malformed and was not unpacked."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest it was announced with; nothing was kept."""


class RegistryError(ImageError):
    """A registry refused or failed a request."""


class ManifestNotFound(RegistryError):
    """The registry has no manifest for a reference."""


class RegistryUnreachable(RegistryError):
    """The registry did not answer after the bounded retries."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials (or we had none)."""
