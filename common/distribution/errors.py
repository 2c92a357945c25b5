"""Errors of registry traffic and content verification; each message says what failed."""

from __future__ import annotations

__all__ = [
    "DigestMismatch",
    "ImageError",
    "ManifestNotFound",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachable",
    "SizeMismatch",
]


class ImageError(Exception):
    """Base class of every image error, local (the agent's store) or remote (a registry)."""


class DigestMismatch(ImageError):
    """Content did not hash to the digest it was announced with; nothing was kept."""


class SizeMismatch(ImageError):
    """Content was larger than its declared size or a cap, or shorter than declared:
    it was cut off where it went over, and nothing was kept."""


class RegistryError(ImageError):
    """A registry refused or failed a request."""


class ManifestNotFound(RegistryError):
    """The registry has no manifest for a reference."""


class RegistryUnreachable(RegistryError):
    """The registry did not answer after the bounded retries."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials (or we had none)."""
