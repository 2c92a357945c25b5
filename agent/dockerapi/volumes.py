"""`/volumes/...`: the node's named volumes (`docker volume`), driver `local` only."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from dockyard.agent.containers.errors import ApiError
from dockyard.agent.containers.volumes import Volume
from dockyard.agent.dockerapi.context import DockerApiContext, with_context
from dockyard.agent.dockerapi.errors import bad_request, from_api_error
from dockyard.agent.dockerapi.events import event_bus
from dockyard.agent.dockerapi.filters import parse_filters, query_bool
from dockyard.agent.dockerapi.responses import json_response
from dockyard.common.validation import ValidationError, check_labels

__all__ = ["ANONYMOUS_LABEL", "add_routes", "volume_json", "volume_size"]

ANONYMOUS_LABEL = "com.docker.volume.anonymous"
"""What Docker 23+ marks a volume made without a name with (what `prune` removes)."""
_PRUNE_ALL_SINCE = (1, 42)
"""From API 1.42 on, `volume prune` removes only anonymous volumes unless `all=true`."""


def volume_json(volume: Volume, ref_count: int = -1) -> dict[str, Any]:
    """A volume as Docker's API describes it."""
    return {
        "Name": volume.name,
        "Driver": "local",
        "Mountpoint": str(volume.mountpoint),
        "CreatedAt": volume.created_at.isoformat(timespec="seconds"),
        "Status": None,
        "Labels": dict(volume.labels),
        "Scope": "local",
        "Options": {},
        "UsageData": {"Size": -1, "RefCount": ref_count},
    }


def volume_size(path: Path) -> int:
    """Bytes under a directory (blocking; symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _matches(volume: Volume, filters: dict[str, list[str]], users: int) -> bool:
    for name in filters.get("name", []):
        if name not in volume.name:
            return False
    for wanted in filters.get("label", []):
        key, sep, value = wanted.partition("=")
        if key not in volume.labels or (sep and volume.labels[key] != value):
            return False
    for value in filters.get("dangling", []):
        if query_bool(value) != (users == 0):
            return False
    return all(driver == "local" for driver in filters.get("driver", []))


def _publish(ctx: DockerApiContext, action: str, name: str) -> None:
    bus = event_bus(ctx)
    if bus is not None:
        bus.publish("volume", action, name, {"driver": "local"})


async def _users(ctx: DockerApiContext, name: str) -> int:
    try:
        return len(await ctx.require_containers().volume_users(name))
    except ApiError as exc:
        raise from_api_error(exc, f"get {name}: no such volume") from None


def _store_call(call: Any, *args: Any) -> Any:
    return asyncio.to_thread(call, *args)


async def _list_volumes(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"))
    unknown = set(filters) - {"name", "label", "dangling", "driver"}
    if unknown:
        raise bad_request(f"invalid filter '{sorted(unknown)[0]}'")
    containers = ctx.require_containers()
    try:
        volumes = await _store_call(containers.volume_store().list)
    except ApiError as exc:
        raise from_api_error(exc) from None
    rows = []
    for volume in volumes:
        count = await _users(ctx, volume.name)
        if _matches(volume, filters, count):
            rows.append(volume_json(volume, count))
    return json_response({"Volumes": rows, "Warnings": None})


async def _create(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    body = await _json_body(request)
    name = body.get("Name") or ""
    driver = body.get("Driver") or "local"
    labels = body.get("Labels") or {}
    if not isinstance(name, str):
        raise bad_request("Name: must be a string")
    if driver != "local":
        raise bad_request(f"Driver: only the 'local' driver is supported, not {driver!r}")
    if body.get("DriverOpts"):
        raise bad_request("DriverOpts: options of the local driver are not supported")
    try:
        check_labels("Labels", labels)
    except ValidationError as exc:
        raise bad_request(str(exc)) from None
    if not name:
        name = secrets.token_hex(32)
        labels = {**labels, ANONYMOUS_LABEL: ""}
    store = ctx.require_containers()
    try:
        volume, made = await _store_call(store.volume_store().ensure, name, labels)
    except ApiError as exc:
        raise from_api_error(exc) from None
    if made:
        _publish(ctx, "create", volume.name)
    return json_response(volume_json(volume, await _users(ctx, volume.name)), status=201)


async def _inspect(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        volume = await _store_call(ctx.require_containers().volume_store().get, name)
    except ApiError as exc:
        raise from_api_error(exc, f"get {name}: no such volume") from None
    return json_response(volume_json(volume, await _users(ctx, name)))


async def _remove(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    name = request.match_info["name"]
    force = query_bool(request.query.get("force"))
    try:
        await ctx.require_containers().remove_volume(name, force)
    except ApiError as exc:
        raise from_api_error(exc, f"get {name}: no such volume") from None
    _publish(ctx, "destroy", name)
    return web.Response(status=204)


async def _prune(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"))
    prune_all = any(query_bool(v) for v in filters.pop("all", []))
    unknown = set(filters) - {"label"}
    if unknown:
        raise bad_request(f"invalid filter '{sorted(unknown)[0]}'")
    version = request.get("docker_api_version", (1, 43))
    if version < _PRUNE_ALL_SINCE:
        prune_all = True
    containers = ctx.require_containers()
    deleted: list[str] = []
    reclaimed = 0
    for volume in await _store_call(containers.volume_store().list):
        if not prune_all and ANONYMOUS_LABEL not in volume.labels:
            continue
        if not _matches(volume, filters, 0) or await _users(ctx, volume.name):
            continue
        size = await _store_call(volume_size, volume.mountpoint)
        try:
            await containers.remove_volume(volume.name)
        except ApiError:
            continue  # taken meanwhile
        deleted.append(volume.name)
        reclaimed += size
        _publish(ctx, "destroy", volume.name)
    return json_response({"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed})


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The volume endpoints."""
    routes.get("/volumes")(with_context(ctx, _list_volumes))
    routes.post("/volumes/create")(with_context(ctx, _create))
    routes.get("/volumes/{name}")(with_context(ctx, _inspect))
    routes.delete("/volumes/{name}")(with_context(ctx, _remove))
    routes.post("/volumes/prune")(with_context(ctx, _prune))


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise bad_request(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body is not a JSON object")
    return body
