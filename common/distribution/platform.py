"""OCI platforms (`linux/amd64`), and this host's."""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass

__all__ = ["Platform", "host_platform_default"]

_ARCH = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
}


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform (`linux/amd64`, `linux/arm64/v8`)."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host_platform_default() -> Platform:
    """The platform of this host (`linux/amd64` on x86_64)."""
    arch, variant = _ARCH.get(host_platform.machine(), (host_platform.machine(), None))
    return Platform("linux", arch, variant)
