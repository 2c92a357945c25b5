"""Media types of OCI and Docker image content, and sha256 digest helpers."""

from __future__ import annotations

import hashlib
import re

from dockyard.common.distribution.errors import DigestMismatch

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "check_digest",
    "digest_hex",
    "sha256_digest",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
LAYER_TYPES = frozenset(
    {DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD}
)
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


def sha256_digest(data: bytes) -> str:
    """The `sha256:<hex>` digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest.

    Raises:
        ValueError: not a sha256 digest (other algorithms are not supported).
    """
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise ValueError(f"unsupported digest {digest!r}: expected sha256:<64 hex>")
    return match.group(1)


def check_digest(data: bytes, expected: str, what: str) -> None:
    """Refuse `data` unless it hashes to `expected`.

    Raises:
        DigestMismatch: naming `what`, the expected and the actual digest.
    """
    actual = sha256_digest(data)
    if actual != expected:
        raise DigestMismatch(f"{what}: digest mismatch, expected {expected}, got {actual}")
