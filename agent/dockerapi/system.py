"""``/_ping``, ``/version`` and ``/info``: what ``docker version|info`` and every client's
version negotiation read."""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import psutil
from aiohttp import web

from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.dockerapi.versions import API_VERSION, MIN_API_VERSION
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.common.version import oci_architecture, package_version

__all__ = ["STORAGE_DRIVER", "add_routes"]

STORAGE_DRIVER = "overlayfs"
"""Docker's ``Driver``: the agent's snapshots are overlayfs layers."""


def _ping_headers() -> dict[str, str]:
    return {
        "API-Version": API_VERSION,
        "Docker-Experimental": "false",
        "OSType": "linux",
        "Ostype": "linux",
        "Builder-Version": "1",
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }


def version_body(ctx: DockerApiContext) -> dict[str, Any]:
    """``GET /version``."""
    version = package_version()
    description = ctx.describe()
    return {
        "Platform": {"Name": f"Dockyard {version}"},
        "Components": [
            {
                "Name": "Engine",
                "Version": version,
                "Details": {
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Arch": oci_architecture(),
                    "Os": "linux",
                    "KernelVersion": platform.release(),
                    "Runtime": ctx.runtime,
                },
            },
            {"Name": ctx.runtime, "Version": description.runtime_version or "unknown"},
        ],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "Os": "linux",
        "Arch": oci_architecture(),
        "KernelVersion": platform.release(),
        "BuildTime": "",
    }


async def _container_counts(ctx: DockerApiContext) -> dict[str, int]:
    counts = {"Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0}
    if ctx.containers is None:
        counts["ContainersStopped"] = 0
        return counts
    views = await ctx.containers.list(all=True)
    running = sum(1 for v in views if v.info.state.status is ContainerStatus.RUNNING)
    counts.update(
        Containers=len(views), ContainersRunning=running, ContainersStopped=len(views) - running
    )
    return counts


async def _image_count(ctx: DockerApiContext) -> int:
    if ctx.images is None:
        return 0
    images = await asyncio.to_thread(ctx.images.store.images)
    return len(images)


def _swarm(ctx: DockerApiContext) -> dict[str, Any]:
    """The cluster membership, read-only, in the shape of Docker's ``Swarm`` section."""
    session = ctx.session
    state = "inactive"
    if session is not None:
        state = {"connected": "active", "connecting": "pending"}.get(session.state, "error")
    return {
        "NodeID": ctx.node_id,
        "NodeAddr": ctx.describe().api_address,
        "LocalNodeState": state,
        "ControlAvailable": False,
        "Error": "" if state != "error" else f"controller session {session and session.state}",
        "RemoteManagers": [{"NodeID": "", "Addr": address} for address in ctx.controllers],
    }


async def info_body(ctx: DockerApiContext) -> dict[str, Any]:
    """``GET /info``: real numbers of this node."""
    description = ctx.describe()
    resources = description.resources
    body: dict[str, Any] = await _container_counts(ctx)
    body.update(
        ID=ctx.node_id,
        Name=ctx.node_name or description.hostname,
        Images=await _image_count(ctx),
        Driver=STORAGE_DRIVER,
        DriverStatus=[["Backing Filesystem", "overlayfs snapshots of the agent's image store"]],
        DockerRootDir=str(ctx.state_dir),
        Plugins={
            "Volume": ["local"],
            "Network": ["bridge", "host", "none"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        MemoryLimit=True,
        SwapLimit=True,
        CpuCfsPeriod=True,
        CpuCfsQuota=True,
        CPUShares=True,
        CPUSet=False,
        PidsLimit=True,
        OomKillDisable=False,
        IPv4Forwarding=True,
        BridgeNfIptables=True,
        BridgeNfIp6tables=True,
        Debug=False,
        NFd=_open_fds(),
        NGoroutines=len(asyncio.all_tasks()),
        SystemTime=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        LoggingDriver="json-file",
        CgroupDriver="cgroupfs",
        CgroupVersion=_cgroup_version(),
        NEventsListener=0,
        KernelVersion=description.kernel_version or platform.release(),
        OperatingSystem=_operating_system(),
        OSVersion="",
        OSType="linux",
        Architecture=platform.machine(),
        IndexServerAddress="https://index.docker.io/v1/",
        RegistryConfig=None,
        NCPU=max(1, round(resources.nano_cpus / 1e9)) if resources.nano_cpus else os.cpu_count(),
        MemTotal=resources.memory_bytes or psutil.virtual_memory().total,
        GenericResources=None,
        HttpProxy=os.environ.get("HTTP_PROXY", ""),
        HttpsProxy=os.environ.get("HTTPS_PROXY", ""),
        NoProxy=os.environ.get("NO_PROXY", ""),
        Labels=[f"dockyard.node.id={ctx.node_id}", f"dockyard.runtime={ctx.runtime}"],
        ExperimentalBuild=False,
        ServerVersion=package_version(),
        Runtimes={ctx.runtime: {"path": ctx.runtime}},
        DefaultRuntime=ctx.runtime,
        Swarm=_swarm(ctx),
        LiveRestoreEnabled=True,
        Isolation="",
        InitBinary="",
        ContainerdCommit={"ID": "", "Expected": ""},
        RuncCommit={"ID": description.runtime_version, "Expected": ""},
        InitCommit={"ID": "", "Expected": ""},
        SecurityOptions=["name=seccomp,profile=builtin", "name=cgroupns"],
        Warnings=None,
        Uptime=int(time.time() - ctx.started_at),
    )
    return body


@functools.cache
def _cgroup_version() -> str:
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@functools.cache
def _operating_system() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return "Linux"


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """``/_ping`` (GET, HEAD), ``/version``, ``/info``."""

    @routes.get("/_ping")  # aiohttp answers HEAD too (no body)
    async def ping(request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK", headers=_ping_headers())

    @routes.get("/version")
    async def version(request: web.Request) -> web.StreamResponse:
        return json_response(version_body(ctx))

    @routes.get("/info")
    async def info(request: web.Request) -> web.StreamResponse:
        return json_response(await info_body(ctx))
