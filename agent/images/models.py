"""Plain data the image subsystem hands out: images, their layers and config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dockyard.common.distribution.platform import Platform

__all__ = ["Image", "ImageConfig", "ImageSummary", "Layer"]


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer: its blob as stored/transferred and its uncompressed diff id."""

    digest: str
    size: int
    media_type: str
    diff_id: str


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The runtime part of an OCI image config (what a container starts with)."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_oci(cls, config: dict[str, Any]) -> ImageConfig:
        """Read the `config` object of an OCI/Docker image config JSON."""
        return cls(
            entrypoint=config.get("Entrypoint") or None,
            cmd=config.get("Cmd") or None,
            env=list(config.get("Env") or []),
            working_dir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            exposed_ports=sorted((config.get("ExposedPorts") or {}).keys()),
            labels=dict(config.get("Labels") or {}),
        )

    def to_oci(self) -> dict[str, Any]:
        """The `config` object of an OCI image config JSON."""
        out: dict[str, Any] = {"Env": self.env}
        if self.entrypoint:
            out["Entrypoint"] = self.entrypoint
        if self.cmd:
            out["Cmd"] = self.cmd
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            out["Labels"] = self.labels
        return out


@dataclass(frozen=True, slots=True)
class Image:
    """A local image: its manifest, config and layers (bottom layer first).

    Attributes:
        digest: Manifest digest (what `docker images --digests` shows).
        config_digest: The image id (`sha256` of the config JSON).
        media_type: Manifest media type (OCI or Docker schema 2).
        layers: Layers, bottom first, as in the manifest.
        config: Runtime config (Entrypoint, Cmd, Env, ...).
        created: RFC 3339 creation time from the config ("" when absent).
        platform: Platform from the config.
        references: Full references (`docker.io/library/busybox:latest`) naming it.
    """

    digest: str
    config_digest: str
    media_type: str
    layers: tuple[Layer, ...]
    config: ImageConfig
    created: str
    platform: Platform
    references: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """The image id, as docker defines it: the config digest."""
        return self.config_digest

    @property
    def size(self) -> int:
        """Sum of the layer blob sizes (bytes transferred to pull it)."""
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """One row of `images list`: one per reference (or one untagged row)."""

    repository: str
    tag: str
    digest: str
    image_id: str
    size: int
    created: str
