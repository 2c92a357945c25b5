"""``/containers/...``: create, start, stop, kill, restart, remove, wait, logs, inspect,
list, rename, top, stats, archive, prune (filled in by the container endpoints' commit)."""

from __future__ import annotations

from aiohttp import web

from dockyard.agent.dockerapi.context import DockerApiContext

__all__ = ["add_routes"]


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The container endpoints."""
