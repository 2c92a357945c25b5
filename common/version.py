"""The project's version and the VersionInfo record every component reports."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dockyard.v1.types_pb2 import VersionInfo

API_VERSION = "v1"


def package_version() -> str:
    """The installed distribution's version, or "dev" when run from a bare tree."""
    try:
        return metadata.version("dockyard")
    except metadata.PackageNotFoundError:
        return "dev"


def oci_architecture(machine: str | None = None) -> str:
    """Map `uname -m` names to the names OCI images use."""
    machine = (machine or platform.machine()).lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def version_info(component: str) -> VersionInfo:
    """Describe this process for `dockyard version`."""
    import grpc

    from dockyard.v1.types_pb2 import VersionInfo

    return VersionInfo(
        component=component,
        version=package_version(),
        api_version=API_VERSION,
        python_version=platform.python_version(),
        grpc_version=grpc.__version__,
        os=platform.system().lower(),
        architecture=oci_architecture(),
    )
