"""``docker run --network N`` where N is a cluster overlay network (Swarm's attachable
networks): the container is attached by the leader, which gives it an address there,
and joins the network as a task's container does (agent/network/attacher.py).

A create body whose ``HostConfig.NetworkMode`` names neither a predefined network nor
one of this node's user-defined ones is taken for a cluster network when the agent has
a controller session: the container runs on the node's bridge (its way out and to the
node's DNS server, as Docker's ``docker_gwbridge``) plus the overlay network, named by
its container name (and ``--network-alias``es) there. A network that is not
``--attachable`` is refused with Docker's message. The attachment is released when the
container is destroyed, however (``rm``, ``--rm``): recorded in the state dir and asked
of the leader until it is made (agent/network/detach_queue.py), and after an agent
restart for the containers that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from dockyard.agent.dockerapi.container_view import is_task
from dockyard.agent.dockerapi.errors import DockerApiError, bad_request, forbidden
from dockyard.agent.network.attacher import AttachError

if TYPE_CHECKING:
    from dockyard.agent.containers.service import ContainerView
    from dockyard.agent.dockerapi.context import DockerApiContext
    from dockyard.agent.runtime.base import ContainerSpec

__all__ = [
    "ClusterJoin",
    "cluster_network_of",
    "endpoints",
    "on_destroy",
    "release",
    "release_gone",
]

log = structlog.get_logger(__name__)

_PREDEFINED = ("", "default", "bridge", "host", "none")


class ClusterJoin:
    """One create's attachment: ``prepare`` (given to the container service) attaches
    the container once its ID and name are chosen; ``undo`` releases it when the create
    failed after that."""

    def __init__(self, ctx: DockerApiContext, network: str, aliases: list[str]) -> None:
        self._ctx = ctx
        self.network = network
        self._aliases = aliases
        self.container_id = ""

    async def prepare(self, spec: ContainerSpec) -> ContainerSpec:
        attacher = self._ctx.attacher
        assert attacher is not None
        try:
            attached = await attacher.attach(self.network, spec.id, spec.name, self._aliases)
        except AttachError as exc:
            raise _docker_error(self.network, exc) from None
        self.container_id = spec.id
        self._ctx.attached.add(spec.id)
        log.info(
            "dockerapi.cluster_network_attached",
            container_id=spec.id[:12],
            network=attached.network_name,
            address=attached.address,
        )
        return replace(spec, overlays=((attached.network_id, attached.address),))

    def joined(self) -> None:
        """The container is on the network: the node's DNS server answers it the
        network's names from now on (a task gets them with the next map, which its
        RUNNING state brings; nothing else would bring one here)."""
        if self._ctx.cluster_network is not None:
            self._ctx.cluster_network.scope_names()

    async def undo(self) -> None:
        if self.container_id:
            await release(self._ctx, self.container_id)


def cluster_network_of(
    ctx: DockerApiContext, body: Any, is_local: Callable[[str], bool]
) -> tuple[Any, ClusterJoin | None]:
    """A create body naming a cluster network: the body on ``bridge`` and the join to
    make; other bodies (and agents without a controller session) pass unchanged."""
    connected = ctx.connected is None or ctx.connected.is_set()
    if ctx.attacher is None or not connected or not isinstance(body, dict):
        return body, None  # no leader to ask now: create's own "network N not found"
    host = body.get("HostConfig")
    mode = host.get("NetworkMode") if isinstance(host, dict) else None
    if not isinstance(mode, str) or mode in _PREDEFINED or ":" in mode or is_local(mode):
        return body, None
    assert isinstance(host, dict)
    aliases: list[str] = []
    networking = body.get("NetworkingConfig")
    endpoints = networking.get("EndpointsConfig") if isinstance(networking, dict) else None
    endpoint = endpoints.get(mode) if isinstance(endpoints, dict) else None
    if isinstance(endpoint, dict) and endpoint.get("Aliases"):
        found = endpoint["Aliases"]
        if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
            raise bad_request("NetworkingConfig.EndpointsConfig.Aliases: a list of names")
        aliases = list(found)
    return {**body, "HostConfig": {**host, "NetworkMode": "bridge"}}, ClusterJoin(
        ctx, mode, aliases
    )


def _docker_error(network: str, exc: AttachError) -> DockerApiError:
    if exc.code == grpc.StatusCode.PERMISSION_DENIED:  # Docker's words, with its status
        return forbidden(
            f"Could not attach to network {network}: rpc error: code = PermissionDenied "
            f"desc = {exc}"
        )
    if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        # 400, not Docker's 404: the docker CLI takes any 404 of a create for a missing image
        return bad_request(f"network {network} not found: {exc}")
    if exc.code not in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return DockerApiError(500, f"Could not attach to network {network}: {exc}")
    # still "not found" for the docker CLI's sake, saying why nothing more is known
    return bad_request(
        f"network {network} not found: it is none of this node's networks, and the "
        f"leader could not be asked about the cluster's ({exc})"
    )


async def release(ctx: DockerApiContext, container_id: str) -> None:
    """Release the container's attachments: recorded first, and asked again until made
    when the controller cannot be reached now (``DetachQueue``)."""
    ctx.attached.discard(container_id)
    if ctx.detaches is not None:
        await ctx.detaches.release(container_id)
        return
    if ctx.attacher is None:
        return
    try:
        count = await ctx.attacher.detach(container_id)
    except AttachError as exc:
        log.warning(
            "dockerapi.cluster_network_detach_failed",
            container_id=container_id[:12],
            error=str(exc),
        )
        return
    log.info("dockerapi.cluster_network_detached", container_id=container_id[:12], networks=count)


async def release_gone(ctx: DockerApiContext) -> None:
    """Once the session is up: release this node's attachments of containers that no
    longer exist (removed while the agent was down, or lost with it), and remember the
    others' (their removal releases them)."""
    if ctx.attacher is None or ctx.containers is None or ctx.connected is None:
        return
    await ctx.connected.wait()
    views = await ctx.containers.list(all=True)
    ctx.attached.update(v.info.id for v in views if v.info.config.overlays and not is_task(v.info))
    for _ in range(5):
        try:
            count = await ctx.attacher.prune([v.info.id for v in views])
        except AttachError as exc:
            log.warning("dockerapi.cluster_network_prune_failed", error=str(exc))
            await asyncio.sleep(2.0)
            continue
        if count:
            log.info("dockerapi.cluster_network_pruned", released=count)
        return


async def on_destroy(ctx: DockerApiContext, container_id: str) -> None:
    """A destroyed container's attachments go with it."""
    if container_id in ctx.attached:
        with contextlib.suppress(Exception):
            await release(ctx, container_id)


def endpoints(ctx: DockerApiContext, view: ContainerView) -> dict[str, dict[str, Any]]:
    """``NetworkSettings.Networks`` of a standalone container on cluster networks: each
    one by its name, with the container's address and aliases there (the node's bridge,
    its way out, is not listed, as Docker lists no ``docker_gwbridge``); empty for other
    containers."""
    info = view.info
    if not info.config.overlays or is_task(info):
        return {}
    overlays = ctx.cluster_network.overlays if ctx.cluster_network is not None else None
    found: dict[str, dict[str, Any]] = {}
    for network_id, address in info.config.overlays:
        overlay = overlays.network_map(network_id) if overlays is not None else None
        name, prefix, aliases = network_id, 0, []
        if overlay is not None:
            name = overlay.network.spec.name or network_id
            if overlay.network.subnet:
                prefix = ipaddress.IPv4Network(overlay.network.subnet).prefixlen
            aliases = sorted(
                {
                    n.name
                    for n in overlay.names
                    if n.name != info.name and not n.vip and list(n.addresses) == [address]
                }
            )
        short_id = info.id[:12]
        found[name] = {
            "IPAMConfig": {"IPv4Address": address},
            "Links": None,
            "Aliases": [*aliases, short_id],
            "MacAddress": "",
            "DriverOpts": None,
            "NetworkID": network_id,
            "EndpointID": network_id[:32] + info.id[:32],
            "Gateway": "",
            "IPAddress": address,
            "IPPrefixLen": prefix,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": [info.name, *aliases, short_id],
        }
    return found
