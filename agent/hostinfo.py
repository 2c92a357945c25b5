"""What this host offers: CPUs, memory, kernel, platform."""

from __future__ import annotations

import asyncio
import os
import platform
import socket

import psutil

from dockyard.common.version import oci_architecture, package_version
from dockyard.v1.types_pb2 import NodeDescription, Platform, Resources


def host_resources(cpus: float | None = None, memory_bytes: int | None = None) -> Resources:
    """The CPUs this process may run on and the host's memory, unless overridden
    (several agents on one machine may each claim a share)."""
    nano_cpus = int((cpus if cpus is not None else len(os.sched_getaffinity(0))) * 1e9)
    memory = memory_bytes if memory_bytes is not None else psutil.virtual_memory().total
    return Resources(nano_cpus=nano_cpus, memory_bytes=memory)


async def runtime_version(runtime: str) -> str:
    """First line of `<runtime> --version`, or "" when it is not installed."""
    binary = {"runc": "runc", "docker": "dockerd"}.get(runtime)
    if binary is None:
        return package_version() if runtime == "hollow" else ""
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(process.communicate(), 5.0)
    except (OSError, TimeoutError):
        return ""
    first = out.decode(errors="replace").splitlines()
    return first[0].split("version")[-1].strip() if first else ""


def describe_host(
    runtime: str,
    runtime_ver: str,
    api_address: str,
    resources: Resources,
    hostname: str | None = None,
) -> NodeDescription:
    return NodeDescription(
        hostname=hostname or socket.gethostname(),
        platform=Platform(os=platform.system().lower(), architecture=oci_architecture()),
        resources=resources,
        agent_version=package_version(),
        runtime=runtime,
        runtime_version=runtime_ver,
        kernel_version=platform.release(),
        api_address=api_address,
    )
