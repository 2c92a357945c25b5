"""Pinning a service's image tag to the manifest digest its registry serves now.

As `docker service create` does: the spec then names `busybox:1.36@sha256:...`, so
every replica, today's and those made after the tag moves, runs the same bytes.
When the registry cannot be asked, the tag stays and the caller gets Docker's
warning; each node then resolves the tag by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import structlog

from dockyard.common.distribution.auth import Credentials
from dockyard.common.distribution.errors import ImageError
from dockyard.common.distribution.registry import RegistryClient, RegistryConfig
from dockyard.common.reference import InvalidReference, Reference, parse_reference
from dockyard.v1.control_pb2 import ResolveImage
from dockyard.v1.workloads_pb2 import ServiceSpec

__all__ = ["ImageResolver", "Pinned"]

log = structlog.get_logger(__name__)

Mode: TypeAlias = ResolveImage.ValueType


@dataclass
class Pinned:
    """A spec whose image is pinned (or kept, with `warnings` saying why)."""

    spec: ServiceSpec
    warnings: list[str] = field(default_factory=list)


class ImageResolver:
    """Resolves tags through the controller's registry settings (mirrors first).

    Args:
        registry: Mirrors, plaintext registries and credentials, as the agents'.
        default: What RESOLVE_IMAGE_UNSPECIFIED means (the controller's --resolve-image).
        timeout: Seconds one resolution may take before the tag is kept as is.
    """

    def __init__(
        self, registry: RegistryConfig, default: Mode = ResolveImage.ALWAYS, timeout: float = 10.0
    ) -> None:
        self.registry = registry
        self.default = default
        self.timeout = timeout

    def mode(self, asked: Mode) -> Mode:
        return self.default if asked == ResolveImage.RESOLVE_IMAGE_UNSPECIFIED else asked

    async def pin(
        self,
        spec: ServiceSpec,
        asked: Mode,
        *,
        previous: ServiceSpec | None = None,
        force: bool = False,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> Pinned:
        """`spec` with its image pinned as `asked` says.

        On an update (`previous` is the stored spec) an image the request leaves as it
        was is not looked up again, so scaling never moves a tag; a `force`d update
        with ALWAYS re-resolves the tag, as `docker service update --force` does.
        `credentials` (registry -> login) are the caller's `--with-registry-auth`.
        """
        pinned = ServiceSpec()
        pinned.CopyFrom(spec)
        image = spec.task.container.image
        mode = self.mode(asked)
        refresh = force and mode == ResolveImage.ALWAYS
        if mode == ResolveImage.NEVER:
            return Pinned(pinned)
        if previous is not None:
            before = previous.task.container.image
            if image == before and not refresh:
                return Pinned(pinned)
            if mode == ResolveImage.CHANGED and "@" not in image and _same_tag(before, image):
                pinned.task.container.image = before  # the same tag: keep its pin
                return Pinned(pinned)
        target = _target(image, refresh)
        if target is None:
            return Pinned(pinned)
        try:
            digest = await asyncio.wait_for(self._resolve(target, credentials), self.timeout)
        except (ImageError, TimeoutError, OSError) as exc:
            reason = str(exc) or f"no answer in {self.timeout:g} s"
            log.warning("image.resolve_failed", image=image, error=reason)
            return Pinned(pinned, [_warning(target.familiar(), reason)])
        pinned.task.container.image = target.with_digest(digest).familiar()
        log.info("image.pinned", image=image, digest=digest)
        return Pinned(pinned)

    async def _resolve(
        self, ref: Reference, credentials: Mapping[str, Credentials] | None = None
    ) -> str:
        async with RegistryClient(self.registry, credentials) as client:
            _, _, _, digest = await client.resolve(ref)
        return digest


def _target(image: str, refresh: bool) -> Reference | None:
    """The tagged reference to look up, or None to leave the image as it is."""
    ref = parse_reference(image)
    if ref.tag is None:
        return None  # pinned by digest alone: nothing to resolve
    if ref.digest is not None:  # already pinned: look the tag up again only when asked
        return ref.with_tag(ref.tag) if refresh else None
    return ref


def _same_tag(pinned: str, image: str) -> bool:
    """Whether `image` names the repository and tag `pinned` was resolved from."""
    try:
        before, now = parse_reference(pinned), parse_reference(image)
    except InvalidReference:
        return False
    return (before.name, before.tag) == (now.name, now.tag)


def _warning(image: str, reason: str) -> str:
    return (
        f"image {image} could not be accessed on a registry to record its digest ({reason}). "
        f"Each node will access {image} independently, possibly leading to different nodes "
        "running different versions of the image."
    )
