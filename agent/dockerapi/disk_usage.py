"""`GET /system/df`: what the node's images, containers and volumes take (`docker system df`).

Image sizes are their stored (compressed) layer blobs, shared layers counted once in
`LayersSize`; a volume's size is what its directory holds (walked in a thread); a
container's writable layer is not measured (`SizeRw` 0).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi import image_view
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.dockerapi.volumes import volume_json, volume_size
from dockyard.agent.runtime.base import ContainerStatus

__all__ = ["add_routes", "container_row"]


def container_row(view: ContainerView, image_id: str) -> dict[str, Any]:
    """A container as `system df` lists it."""
    info = view.info
    running = info.state.status is ContainerStatus.RUNNING
    command = [*(info.config.entrypoint or []), *(info.config.command or [])]
    return {
        "Id": info.id,
        "Names": [f"/{info.name}"],
        "Image": info.image,
        "ImageID": image_id,
        "Command": " ".join(command),
        "Created": int(info.created_at.timestamp()),
        "State": info.state.status.value,
        "Status": "Up" if running else "Exited",
        "SizeRw": 0,
        "SizeRootFs": 0,
        "Labels": dict(info.config.labels),
        "Mounts": [],
    }


async def _df(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    views = await ctx.containers.list(all=True) if ctx.containers is not None else []
    used = Counter(view.meta.image_digest for view in views)
    images = ctx.images.store.images() if ctx.images is not None else []
    layers: dict[str, int] = {}
    rows = []
    by_digest = {}
    for image in images:
        by_digest[image.digest] = image.id
        for layer in image.layers:
            layers[layer.digest] = layer.size
        rows.append(image_view.summary(image, used.get(image.digest, 0)))
    volumes = []
    if ctx.containers is not None and ctx.containers.volumes is not None:
        for volume in await asyncio.to_thread(ctx.containers.volumes.list):
            row = volume_json(volume, len(await ctx.containers.volume_users(volume.name)))
            row["UsageData"]["Size"] = await asyncio.to_thread(volume_size, volume.mountpoint)
            volumes.append(row)
    return json_response(
        {
            "LayersSize": sum(layers.values()),
            "Images": rows,
            "Containers": [container_row(v, by_digest.get(v.meta.image_digest, "")) for v in views],
            "Volumes": volumes,
            "BuildCache": [],
        }
    )


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The disk usage endpoint."""

    async def df(request: web.Request) -> web.StreamResponse:
        return await _df(request, ctx)

    routes.get("/system/df")(df)
