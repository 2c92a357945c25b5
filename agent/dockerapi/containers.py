"""``/containers/...``: the lifecycle, inspect and list of the node's containers.

Containers made here are the agent's ordinary containers (``dockyard -H NODE ps`` shows
them, the privilege policy and the defaults are the same). A service task's container is
shown but not changed (403, see ``lookup.check_not_task``). Logs, stats and top are in
``container_observe.py``, ``docker cp`` in ``archive.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.containers.errors import (
    ApiError,
    FailedPrecondition,
    ImageMissing,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from dockyard.agent.containers.request import parse_create
from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi import networks
from dockyard.agent.dockerapi.cluster_networks import cluster_network_of
from dockyard.agent.dockerapi.container_config import parse_create_body
from dockyard.agent.dockerapi.container_view import (
    inspect_body,
    label_matches,
    list_row,
)
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, conflict
from dockyard.agent.dockerapi.lookup import (
    check_not_task,
    docker_error,
    docker_errors,
    find_container,
)
from dockyard.agent.dockerapi.responses import JSON, json_response
from dockyard.agent.runtime.base import ContainerStatus, ExitInfo

__all__ = ["add_routes", "flag", "image_id_of", "int_param"]

log = structlog.get_logger(__name__)

WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
REMOVED_POLL_SECONDS = 0.05
MAX_LIST_FILTERS = 64


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter as Docker's clients send them (1/true/0/false)."""
    value = request.query.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no")


def int_param(request: web.Request, name: str) -> int | None:
    """An integer query parameter; 400 naming it when malformed."""
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {value!r}") from None


def image_id_of(ctx: DockerApiContext, view: ContainerView) -> str:
    """Docker's image ID (``sha256:`` of the config) of the container's image."""
    digest = view.meta.image_digest
    if ctx.images is None or not digest:
        return digest
    try:
        return str(ctx.images.resolve(digest).id)
    except Exception:  # an image removed meanwhile: the digest still identifies it
        return digest


async def _json_body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json(loads=json.loads)
    except ValueError as exc:
        raise bad_request(f"malformed JSON body: {exc}") from None


def _parse_filters(request: web.Request) -> dict[str, list[str]]:
    """Docker's ``filters`` (``{"label": ["a=b"]}`` or the old ``{"label": {"a=b": true}}``)."""
    text = request.query.get("filters", "")
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise bad_request(f"invalid filters: {text[:200]!r}") from None
    if not isinstance(raw, dict) or len(raw) > MAX_LIST_FILTERS:
        raise bad_request("invalid filters: expected an object")
    filters: dict[str, list[str]] = {}
    for key, given in raw.items():
        values = [k for k, v in given.items() if v] if isinstance(given, dict) else given
        if not isinstance(values, list) or len(values) > MAX_LIST_FILTERS:
            raise bad_request(f"invalid filter {key!r}")
        filters[str(key)] = [str(v) for v in values]
    return filters


FILTERS: dict[str, Callable[[ContainerView, str], bool]] = {
    "id": lambda v, x: v.info.id.startswith(x),
    "name": lambda v, x: x.lstrip("/") in v.info.name,
    "label": lambda v, x: label_matches(v.info.labels, x),
    "status": lambda v, x: v.info.state.status.value == x,
    "ancestor": lambda v, x: v.info.image == x or v.info.image.split(":")[0] == x,
    "exited": lambda v, x: (
        v.info.state.status is ContainerStatus.EXITED and str(v.info.state.exit_code) == x
    ),
}


def matches(view: ContainerView, filters: Mapping[str, list[str]]) -> bool:
    """Every filter key matches (any of its values; every one of `label`'s)."""
    for key, values in filters.items():
        test = FILTERS.get(key)
        if test is None:
            raise bad_request(f"invalid filter '{key}'")
        if key == "label":  # labels all apply (docker-compose filters on three)
            if not all(test(view, value) for value in values):
                return False
        elif values and not any(test(view, value) for value in values):
            return False
    return True


async def _create(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    service = ctx.require_containers()
    name = request.query.get("name", "")
    body, network, aliases = networks.prepare_create(ctx, await _json_body(request))
    body, join = cluster_network_of(ctx, body, lambda ref: networks.is_local(ctx, ref))
    parsed = parse_create_body(body, name)
    created = False
    try:
        checked = parse_create(parsed.request)
        local = network.local_bridge() if network is not None else None
        if local is not None:  # on the network's own bridge, not the node's
            checked = replace(checked, spec=replace(checked.spec, local_network=local))
        ctx.admission.check(parsed.request)
        view = await service.create(checked, join.prepare if join is not None else None)
        created = True
    except ImageMissing:
        raise DockerApiError(404, f"No such image: {parsed.request.image}") from None
    except PermissionDenied as exc:
        raise DockerApiError(403, str(exc)) from exc
    except ApiError as exc:
        raise docker_error(exc, name) from exc
    finally:
        if join is not None and not created:  # maybe attached before it failed
            await asyncio.shield(join.undo())
    networks.join_created(ctx, view.info.id, network, aliases)
    if join is not None:
        join.joined()
    log.info("dockerapi.container_created", container_id=view.info.id, name=view.info.name)
    return json_response({"Id": view.info.id, "Warnings": []}, status=201)


async def _start(ctx: DockerApiContext, ref: str) -> web.StreamResponse:
    view = await find_container(ctx, ref)
    check_not_task(view, "start")
    if view.info.state.status is ContainerStatus.RUNNING:
        return web.Response(status=304)
    with docker_errors(ref):
        await ctx.require_containers().start_container(view.info.id)
    ctx.started(view.info.id)
    return web.Response(status=204)


async def _stop(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    view = await find_container(ctx, ref)
    check_not_task(view, "stop")
    if view.info.state.status is not ContainerStatus.RUNNING:
        return web.Response(status=304)
    timeout = int_param(request, "t")
    with docker_errors(ref):
        await ctx.require_containers().stop(
            view.info.id, None if timeout is None or timeout < 0 else float(timeout)
        )
    return web.Response(status=204)


async def _restart(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    view = await find_container(ctx, ref)
    check_not_task(view, "restart")
    timeout = int_param(request, "t")
    service = ctx.require_containers()
    with docker_errors(ref):
        if view.info.state.status is ContainerStatus.RUNNING:
            await service.stop(view.info.id, None if timeout is None else float(max(0, timeout)))
        await service.start_container(view.info.id)
    ctx.started(view.info.id)
    return web.Response(status=204)


async def _kill(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    view = await find_container(ctx, ref)
    check_not_task(view, "kill")
    if view.info.state.status is not ContainerStatus.RUNNING:
        raise conflict(f"Cannot kill container: {ref}: Container {view.info.id} is not running")
    with docker_errors(ref):
        await ctx.require_containers().kill(view.info.id, request.query.get("signal", "KILL"))
    return web.Response(status=204)


async def _remove(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    view = await find_container(ctx, ref)
    check_not_task(view, "remove")
    force = flag(request, "force")
    if view.info.state.status is ContainerStatus.RUNNING and not force:
        raise conflict(
            f"You cannot remove a running container {view.info.id}. Stop the container "
            "before attempting removal or force remove"
        )
    with docker_errors(ref):
        await ctx.require_containers().remove(view.info.id, force=force)
    return web.Response(status=204)


async def _wait_exit(ctx: DockerApiContext, view: ContainerView, condition: str) -> ExitInfo:
    service = ctx.require_containers()
    container_id = view.info.id
    status = view.info.state.status
    if condition == "next-exit" and status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
        await ctx.next_start(container_id).wait()
    with docker_errors(view.info.name):
        exit_info = await service.wait(container_id)
    if condition == "removed":
        while True:  # the supervisor removes an --rm container right after its exit
            try:
                await service.inspect(container_id)
            except NotFound:
                break
            await asyncio.sleep(REMOVED_POLL_SECONDS)
    return exit_info


async def _wait(ctx: DockerApiContext, request: web.Request, ref: str) -> web.StreamResponse:
    condition = request.query.get("condition") or "not-running"
    if condition not in WAIT_CONDITIONS:
        raise bad_request(f"invalid condition: {condition!r}")
    view = await find_container(ctx, ref)
    response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
    await response.prepare(request)
    await response.write(b"\n")  # the headers go now: the client starts the container then
    try:
        exit_info = await _wait_exit(ctx, view, condition)
        body: dict[str, Any] = {"StatusCode": exit_info.exit_code, "Error": None}
        if exit_info.error:
            body["Error"] = {"Message": exit_info.error}
    except DockerApiError as exc:  # too late for a status: Docker puts it in the body
        body = {"StatusCode": -1, "Error": {"Message": exc.message}}
    await response.write(json.dumps(body).encode() + b"\n")
    await response.write_eof()
    return response


async def _list(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    service = ctx.require_containers()
    filters = _parse_filters(request)
    limit = int_param(request, "limit")
    all_ = flag(request, "all") or (limit is not None and limit > 0)
    if "status" in filters and any(s != "running" for s in filters["status"]):
        all_ = True
    views = [v for v in await service.list(all=all_) if matches(v, filters)]
    if limit is not None and limit > 0:
        views = views[:limit]
    now = datetime.now(UTC)
    return json_response(
        [networks.decorate(ctx, v, list_row(v, image_id_of(ctx, v), now)) for v in views]
    )


async def _prune(ctx: DockerApiContext, request: web.Request) -> web.StreamResponse:
    service = ctx.require_containers()
    filters = _parse_filters(request)
    labels = filters.pop("label", [])
    if set(filters) - {"until"}:
        raise bad_request(f"invalid filter '{sorted(set(filters) - {'until'})[0]}'")
    until = _until(filters.get("until", []))
    deleted: list[str] = []
    for view in await service.list(all=True):
        info = view.info
        if info.state.status not in (ContainerStatus.EXITED, ContainerStatus.DEAD):
            continue
        if "dockyard.task.id" in info.labels:
            continue  # the controller's
        if labels and not all(label_matches(info.labels, label) for label in labels):
            continue
        if until is not None and info.created_at.timestamp() >= until:
            continue
        with contextlib.suppress(NotFound, FailedPrecondition, InvalidArgument):
            await service.remove(info.id)
            deleted.append(info.id)
    return json_response({"ContainersDeleted": deleted or None, "SpaceReclaimed": 0})


def _until(values: list[str]) -> float | None:
    if not values:
        return None
    text = values[0]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise bad_request(f"invalid until filter {text!r}") from None


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The container lifecycle, inspect, list and prune."""

    @routes.post("/containers/create")
    async def create(request: web.Request) -> web.StreamResponse:
        return await _create(ctx, request)

    @routes.get("/containers/json")
    async def list_containers(request: web.Request) -> web.StreamResponse:
        return await _list(ctx, request)

    @routes.post("/containers/prune")
    async def prune(request: web.Request) -> web.StreamResponse:
        return await _prune(ctx, request)

    @routes.get("/containers/{id}/json")
    async def inspect(request: web.Request) -> web.StreamResponse:
        view = await find_container(ctx, request.match_info["id"])
        return json_response(
            networks.decorate(ctx, view, inspect_body(view, image_id_of(ctx, view)))
        )

    @routes.post("/containers/{id}/start")
    async def start(request: web.Request) -> web.StreamResponse:
        return await _start(ctx, request.match_info["id"])

    @routes.post("/containers/{id}/stop")
    async def stop(request: web.Request) -> web.StreamResponse:
        return await _stop(ctx, request, request.match_info["id"])

    @routes.post("/containers/{id}/restart")
    async def restart(request: web.Request) -> web.StreamResponse:
        return await _restart(ctx, request, request.match_info["id"])

    @routes.post("/containers/{id}/kill")
    async def kill(request: web.Request) -> web.StreamResponse:
        return await _kill(ctx, request, request.match_info["id"])

    @routes.post("/containers/{id}/wait")
    async def wait(request: web.Request) -> web.StreamResponse:
        return await _wait(ctx, request, request.match_info["id"])

    @routes.post("/containers/{id}/rename")
    async def rename(request: web.Request) -> web.StreamResponse:
        ref = request.match_info["id"]
        name = request.query.get("name", "")
        if not name:
            raise bad_request("name: a new name is required")
        view = await find_container(ctx, ref)
        check_not_task(view, "rename")
        with docker_errors(ref):
            await ctx.require_containers().rename(view.info.id, name)
        return web.Response(status=204)

    @routes.delete("/containers/{id}")
    async def remove(request: web.Request) -> web.StreamResponse:
        return await _remove(ctx, request, request.match_info["id"])
