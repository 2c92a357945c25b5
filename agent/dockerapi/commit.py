"""``POST /commit``: ``docker commit`` of a runc container (``build/commit.py``)."""

from __future__ import annotations

from aiohttp import web

from dockyard.agent.build.commit import CommitRequest, commit_container
from dockyard.agent.build.config_steps import parse_changes
from dockyard.agent.build.dockerfile import DockerfileError
from dockyard.agent.build.upper import UnsupportedUpper
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, conflict
from dockyard.agent.dockerapi.events import event_bus
from dockyard.agent.dockerapi.lookup import check_not_task, find_container
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.images.errors import ImageNotFound, InvalidReference
from dockyard.agent.images.reference import Reference, parse_reference

__all__ = ["add_routes", "commit_refs"]


def commit_refs(repo: str, tag: str) -> list[Reference]:
    """``repo`` and ``tag`` as the reference to name the image by (none: untagged)."""
    if not repo:
        if tag:
            raise bad_request("tag: a tag needs a repository")
        return []
    try:
        ref = parse_reference(f"{repo}:{tag}" if tag else repo)
    except InvalidReference as exc:
        raise bad_request(f"invalid reference format: {exc}") from None
    if ref.digest is not None:
        raise bad_request("repo: a digest cannot name a committed image")
    return [ref]


async def _commit(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    images = ctx.require_images()
    ref = request.query.get("container", "")
    if not ref:
        raise bad_request("container: the container to commit is required")
    view = await find_container(ctx, ref)
    check_not_task(view, "commit")
    if ctx.runtime != "runc" or view.info.log_path is None:
        raise DockerApiError(501, f"docker commit is not supported by dockyard's {ctx.runtime}")
    commit = CommitRequest(
        refs=commit_refs(request.query.get("repo", ""), request.query.get("tag", "")),
        changes=parse_changes(request.query.getall("changes", [])),
        author=request.query.get("author", ""),
        comment=request.query.get("comment", ""),
    )
    try:
        base = images.store.get(view.meta.image_digest)
    except ImageNotFound:
        raise conflict(f"the image of container {view.info.name} is gone") from None
    try:
        image = await commit_container(images.store, base, view.info, commit)
    except DockerfileError as exc:
        raise bad_request(str(exc)) from None
    except UnsupportedUpper as exc:
        raise conflict(str(exc)) from None
    bus = event_bus(ctx)
    if bus is not None:
        bus.publish("container", "commit", view.info.id, {"name": view.info.name})
    return json_response({"Id": image.id}, status=201)


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """``docker commit``."""

    @routes.post("/commit")
    async def commit(request: web.Request) -> web.StreamResponse:
        return await _commit(request, ctx)
