"""The agent's images: references, a content-addressed store, a registry client.

The agent talks to `ImageService`; the rest is public for tests and tools.
"""

from __future__ import annotations

from dockyard.agent.images.errors import (
    DigestMismatch,
    ImageError,
    ImageNotFound,
    ImageStoreError,
    InvalidReference,
    LayerError,
    ManifestNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from dockyard.agent.images.models import Image, ImageConfig, ImageSummary, Layer
from dockyard.agent.images.progress import ProgressCallback, ProgressEvent, Status
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.platform import Platform
from dockyard.common.distribution.registry import RegistryConfig

__all__ = [
    "DigestMismatch",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageNotFound",
    "ImageService",
    "ImageStoreError",
    "ImageSummary",
    "InvalidReference",
    "Layer",
    "LayerError",
    "ManifestNotFound",
    "Platform",
    "ProgressCallback",
    "ProgressEvent",
    "Reference",
    "RegistryAuthError",
    "RegistryConfig",
    "RegistryError",
    "RegistryUnreachable",
    "Status",
    "parse_reference",
]
