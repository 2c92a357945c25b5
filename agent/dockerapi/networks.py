"""`/networks/...`: the agent's networks as Docker shows them, and user-defined networks
(`docker network create`, docker-compose's project network), each a bridge of its own.

The predefined `bridge`, `host` and `none` are the agent's own. A network made with
`POST /networks/create` gets a subnet of its own (`local_subnets.py`: from 10.77.0.0/16,
or `IPAM.Config[0].Subnet`, never overlapping the node's bridge, the overlays, the other
networks or a route of the host) and a Linux bridge (`dyn-<id>`), made at its first
container and deleted by `DELETE /networks/{id}`; containers on different networks cannot
reach each other (`local_bridges.py`). While they run, a network's containers resolve
each other's names and aliases through a DNS server on their bridge's gateway, and only
their network's names.

Other modules (container create and inspect) read the memberships through
:func:`container_networks` and :func:`prepare_create`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.containers.errors import ApiError
from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi import cluster_networks
from dockyard.agent.dockerapi.context import DockerApiContext, with_context
from dockyard.agent.dockerapi.errors import (
    DockerApiError,
    bad_request,
    forbidden,
    from_api_error,
    not_found,
    not_implemented,
)
from dockyard.agent.dockerapi.events import event_bus
from dockyard.agent.dockerapi.filters import parse_filters
from dockyard.agent.dockerapi.network_store import (
    BUILTIN,
    NetworkRecord,
    NetworkStoreError,
    builtin_id,
)
from dockyard.agent.dockerapi.responses import json_response
from dockyard.agent.events import Subscription
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.local_subnets import SubnetError, choose_subnet, host_routes
from dockyard.agent.network.subnet_claims import ClaimsBusyError, SubnetClaims
from dockyard.agent.runtime.base import ContainerStatus
from dockyard.common.taskscope import TaskScope

__all__ = [
    "add_routes",
    "container_networks",
    "dns_records",
    "lifespan",
    "resolve_network",
    "runtime_network",
]

log = structlog.get_logger(__name__)

_DNS_ACTIONS = frozenset({"start", "die", "destroy", "connect", "disconnect", "rename"})
_DRIVERS = {"bridge": "bridge", "host": "host", "none": "null"}


def resolve_network(ctx: DockerApiContext, ref: str) -> tuple[str, NetworkRecord | None]:
    """The network `ref` names (a name, an id or a unique id prefix): its Docker name and,
    for a user-defined one, its record.

    Raises:
        DockerApiError: 404 naming it when there is none.
    """
    name = "bridge" if ref in ("", "default") else ref
    for builtin in BUILTIN:
        if name == builtin or (len(name) >= 12 and builtin_id(builtin).startswith(name)):
            return builtin, None
    record = ctx.network_store().find(name)
    if record is None:
        raise not_found(f"network {ref} not found")
    return record.name, record


def is_local(ctx: DockerApiContext, ref: str) -> bool:
    """Whether ``ref`` names a predefined network or one of this node's user-defined ones."""
    try:
        resolve_network(ctx, ref)
    except DockerApiError:
        return False
    return True


def runtime_network(ctx: DockerApiContext, mode: str) -> tuple[str, NetworkRecord | None]:
    """What a container created with `NetworkMode` runs on (`bridge`, `host`, `none`)
    and the user-defined network it joins (None: a predefined one).

    Raises:
        DockerApiError: 404 for a network that does not exist; 501 for `container:<id>`.
    """
    if mode.startswith("container:"):
        raise not_implemented("NetworkMode container:<id> is not supported by dockyard")
    name, record = resolve_network(ctx, mode)
    return ("bridge" if record is not None else name), record


def container_networks(ctx: DockerApiContext, view: ContainerView) -> dict[str, dict[str, Any]]:
    """`NetworkSettings.Networks` of a container: its runtime network and every
    user-defined one it is on, each with its address and aliases."""
    info = view.info
    mode = info.config.network
    address = info.network.ip_address if info.network is not None else ""
    prefix = info.network.prefix_length if info.network is not None else 0
    gateway = info.network.gateway if info.network is not None else ""
    mac = info.network.mac_address if info.network is not None else ""
    memberships = ctx.network_store().of(info.id)

    def endpoint(network_id: str, aliases: list[str] | None) -> dict[str, Any]:
        return {
            "IPAMConfig": None,
            "Links": None,
            "Aliases": aliases,
            "NetworkID": network_id,
            "EndpointID": (network_id[:32] + info.id[:32]) if address else "",
            "Gateway": gateway,
            "IPAddress": address,
            "IPPrefixLen": prefix,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "MacAddress": mac,
            "DriverOpts": None,
        }

    networks: dict[str, dict[str, Any]] = {}
    if not memberships:
        networks[mode] = endpoint(builtin_id(mode), None)
    for record, member in memberships:
        networks[record.name] = endpoint(record.id, list(member.aliases) or None)
    return networks


def dns_records(ctx: DockerApiContext, views: list[ContainerView]) -> dict[str, list[str]]:
    """Name -> addresses of the running containers on user-defined networks: each one's
    name and aliases (a shared alias, such as a scaled service's, has all addresses)."""
    records: dict[str, list[str]] = {}
    store = ctx.network_store()
    for view in views:
        info = view.info
        if info.state.status is not ContainerStatus.RUNNING or info.network is None:
            continue
        address = info.network.ip_address
        memberships = [(r, m) for r, m in store.of(info.id) if not r.subnet]
        if not address or not memberships:
            continue
        names = {info.name}
        for _record, member in memberships:
            names.update(member.aliases)
        for name in sorted(names):
            records.setdefault(name, []).append(address)
    return records


def local_names(
    ctx: DockerApiContext, views: list[ContainerView]
) -> dict[str, dict[str, list[str]]]:
    """Network id -> name -> addresses, for the networks with a bridge of their own: the
    names and aliases of each one's running containers (a shared alias has them all)."""
    store = ctx.network_store()
    names: dict[str, dict[str, list[str]]] = {}
    for view in views:
        info = view.info
        local = info.config.local_network
        if info.state.status is not ContainerStatus.RUNNING or info.network is None:
            continue
        if local is None or not info.network.ip_address:
            continue
        memberships = [m for r, m in store.of(info.id) if r.id == local.network_id]
        if not memberships:  # disconnected: it keeps its interface, not its names
            continue
        records = names.setdefault(local.network_id, {})
        for name in sorted({info.name, *memberships[0].aliases}):
            records.setdefault(name, []).append(info.network.ip_address)
    return names


def _network_json(
    ctx: DockerApiContext, name: str, record: NetworkRecord | None, views: list[ContainerView]
) -> dict[str, Any]:
    bridge = ctx.cluster_network.bridge.config if ctx.cluster_network is not None else None
    ipam: list[dict[str, str]] = []
    local = record.local_bridge() if record is not None else None
    if local is not None:
        ipam = [{"Subnet": local.subnet, "Gateway": _gateway(local.subnet)}]
    elif (name == "bridge" or record is not None) and bridge is not None:
        ipam = [{"Subnet": bridge.subnet, "Gateway": bridge.gateway}]
    members: dict[str, Any] = {}
    for view in views:
        info = view.info
        on = ctx.network_store().of(info.id)
        if record is not None:
            if not any(r.id == record.id for r, _ in on):
                continue
        elif on or info.config.network != name:
            continue
        net = info.network
        address = f"{net.ip_address}/{net.prefix_length}" if net and net.ip_address else ""
        members[info.id] = {
            "Name": info.name,
            "EndpointID": "",
            "MacAddress": net.mac_address if net else "",
            "IPv4Address": address,
            "IPv6Address": "",
        }
    options: dict[str, str] = {}
    if name == "bridge" and bridge is not None:
        options = {"com.docker.network.bridge.name": bridge.bridge}
    return {
        "Name": name,
        "Id": record.id if record is not None else builtin_id(name),
        "Created": record.created if record is not None else "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": "bridge" if record is not None else _DRIVERS[name],
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": ipam},
        "Internal": record.internal if record is not None else False,
        "Attachable": record.attachable if record is not None else False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": members,
        "Options": _options(record) if record is not None else options,
        "Labels": dict(record.labels) if record is not None else {},
    }


def _options(record: NetworkRecord) -> dict[str, str]:
    options = dict(record.options)
    if record.bridge:
        options["com.docker.network.bridge.name"] = record.bridge
    return options


def _gateway(subnet: str) -> str:
    return str(next(ipaddress.IPv4Network(subnet).hosts()))


async def _views(ctx: DockerApiContext) -> list[ContainerView]:
    if ctx.containers is None:
        return []
    return await ctx.containers.list(all=True)


def _publish(ctx: DockerApiContext, action: str, record_id: str, **attributes: str) -> None:
    bus = event_bus(ctx)
    if bus is not None:
        bus.publish("network", action, record_id, {"type": "bridge", **attributes})


def _label_matches(wanted: str, labels: dict[str, str]) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _check(network: dict[str, Any], key: str, value: str) -> bool:
    if key == "name":
        return value in network["Name"]
    if key == "id":
        return bool(network["Id"].startswith(value))
    if key == "driver":
        return bool(value == network["Driver"])
    if key == "scope":
        return value == "local"
    if key == "type":
        return value == ("builtin" if network["Name"] in BUILTIN else "custom")
    return _label_matches(value, network["Labels"])


def _matches(network: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key not in ("name", "id", "driver", "scope", "type", "label"):
            raise bad_request(f"invalid filter '{key}'")
        if key == "label":
            if not all(_check(network, key, v) for v in values):
                return False
        elif values and not any(_check(network, key, v) for v in values):
            return False
    return True


async def _list(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"))
    filters.pop("dangling", None)
    views = await _views(ctx)
    rows = [_network_json(ctx, name, None, views) for name in BUILTIN]
    rows += [_network_json(ctx, r.name, r, views) for r in ctx.network_store().networks.values()]
    return json_response([row for row in rows if _matches(row, filters)])


async def _inspect(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    name, record = resolve_network(ctx, request.match_info["id"])
    return json_response(_network_json(ctx, name, record, await _views(ctx)))


async def _create(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    body = await _json_body(request)
    name = body.get("Name")
    driver = body.get("Driver") or "bridge"
    if not isinstance(name, str) or not name:
        raise bad_request("Name: a network name is required")
    if driver != "bridge":
        raise bad_request(
            f"Driver {driver!r}: only 'bridge' networks (over the agent's bridge) are supported"
        )
    if body.get("EnableIPv6"):
        raise bad_request("EnableIPv6: IPv6 networks are not supported by dockyard")
    labels, options = body.get("Labels") or {}, body.get("Options") or {}
    if not _str_map(labels) or not _str_map(options):
        raise bad_request("Labels and Options: objects of strings")
    requested = _requested_subnet(body.get("IPAM"))
    store = ctx.network_store()
    claims = _claims(ctx)
    async with _networks_lock(ctx):
        try:
            store.check_new_name(name)
            subnet = await _claim_subnet(ctx, claims, requested, name)
        except (NetworkStoreError, SubnetError) as exc:
            status = 409 if "already exists" in str(exc) else 400
            raise DockerApiError(status, str(exc)) from None
        try:
            record = store.create(
                name,
                labels,
                options,
                bool(body.get("Internal")),
                bool(body.get("Attachable")),
                subnet=subnet,
            )
        except NetworkStoreError as exc:
            await asyncio.to_thread(claims.release, subnet)
            status = 409 if "already exists" in str(exc) else 400
            raise DockerApiError(status, str(exc)) from None
        try:
            await _declare(ctx)
        except NetworkError as exc:
            store.remove(record)
            await asyncio.to_thread(claims.release, subnet)
            raise DockerApiError(500, f"network {name}: {exc}") from None
    _publish(ctx, "create", record.id, name=record.name)
    return json_response({"Id": record.id, "Warning": ""}, status=201)


def _requested_subnet(ipam: Any) -> str:
    """`IPAM.Config[0].Subnet` ("" when none); other IPAM settings are refused."""
    if not ipam:
        return ""
    if not isinstance(ipam, dict):
        raise bad_request("IPAM: an object")
    if ipam.get("Driver") not in (None, "", "default"):
        raise bad_request(f"IPAM.Driver {ipam.get('Driver')!r}: only 'default' is supported")
    config = ipam.get("Config") or []
    if not isinstance(config, list) or not all(isinstance(c, dict) for c in config):
        raise bad_request("IPAM.Config: a list of objects")
    if len(config) > 1:
        raise bad_request("IPAM.Config: one subnet per network is supported by dockyard")
    if not config:
        return ""
    entry = config[0]
    for key in ("IPRange", "AuxiliaryAddresses"):
        if entry.get(key):
            raise bad_request(f"IPAM.Config.{key}: not supported by dockyard")
    subnet = entry.get("Subnet") or ""
    if not isinstance(subnet, str):
        raise bad_request("IPAM.Config.Subnet: a string")
    gateway = entry.get("Gateway") or ""
    if gateway and subnet and gateway != _gateway(subnet):
        raise bad_request(
            f"IPAM.Config.Gateway {gateway}: a network's gateway is its subnet's first address"
        )
    return subnet


async def _taken_subnets(ctx: DockerApiContext) -> list[tuple[str, str]]:
    """What a new network's subnet may not overlap, each with what it is."""
    taken: list[tuple[str, str]] = [
        ("10.87.0.0/16", "the node subnet pool"),
        ("10.112.0.0/12", "the overlay network pool"),
    ]
    cluster = ctx.cluster_network
    if cluster is not None:
        taken.append((cluster.bridge.config.subnet, "the node's bridge"))
        taken += [(s, "an overlay network") for s in cluster.overlays.subnets()]
    for record in ctx.network_store().networks.values():
        if record.subnet:
            taken.append((record.subnet, f"network {record.name}"))
    own = {r.bridge for r in ctx.network_store().networks.values() if r.bridge}
    for network, dev in await asyncio.to_thread(host_routes):
        if dev not in own:
            taken.append((str(network), f"the host's route to {network} (dev {dev or '?'})"))
    return taken


def _claims(ctx: DockerApiContext) -> SubnetClaims:
    """This agent's claims on its networks' subnets, among the host's other agents."""
    return SubnetClaims(ctx.network_store().path)


async def _claim_subnet(
    ctx: DockerApiContext, claims: SubnetClaims, requested: str, name: str
) -> str:
    """A subnet for network `name` that no other agent on this host holds: chosen and
    claimed under the host-wide lock of the claims.

    Raises:
        SubnetError: what `choose_subnet` raises, or the lock was busy too long.
    """
    try:
        async with claims.held():
            taken = await _taken_subnets(ctx) + await asyncio.to_thread(claims.others)
            subnet = choose_subnet(requested, taken)
            if not await asyncio.to_thread(claims.claim, subnet, name):
                raise SubnetError(f"{subnet}: held by another agent on this host")
            return subnet
    except ClaimsBusyError as exc:
        raise SubnetError(f"network {name}: {exc}") from None


def _networks_lock(ctx: DockerApiContext) -> asyncio.Lock:
    """One create or remove at a time (subnets are chosen from what the others hold)."""
    return ctx.networks_lock


async def _declare(ctx: DockerApiContext) -> None:
    """Tell the node's network which user-defined networks exist (isolation, DNS)."""
    if ctx.cluster_network is None:
        return
    local = [
        spec
        for record in ctx.network_store().networks.values()
        if (spec := record.local_bridge()) is not None
    ]
    await ctx.cluster_network.set_local_networks(local)


async def _drop_network(ctx: DockerApiContext, record: NetworkRecord) -> None:
    """Delete a network's bridge, then its record (the caller checked it is unused)."""
    local = record.local_bridge()
    cluster = ctx.cluster_network
    if local is not None and cluster is not None and cluster.local is not None:
        try:
            await cluster.local.remove(local)
        except (NetworkError, OSError) as exc:
            raise forbidden(f"error while removing network {record.name}: {exc}") from None
    ctx.network_store().remove(record)
    if record.subnet:
        await asyncio.to_thread(_claims(ctx).release, record.subnet)
    try:
        await _declare(ctx)
    except NetworkError as exc:
        log.error("dockerapi.network_declare_failed", error=str(exc))


async def _remove(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    name, record = resolve_network(ctx, request.match_info["id"])
    if record is None:
        raise forbidden(f"{name} is a pre-defined network and cannot be removed")
    await _forget_removed(ctx)
    users = ctx.network_store().users(record.id)
    if users:
        raise forbidden(
            f"error while removing network: network {record.name} id {record.id} has active "
            f"endpoints ({', '.join(u[:12] for u in users)})"
        )
    async with _networks_lock(ctx):
        await _drop_network(ctx, record)
    _publish(ctx, "destroy", record.id, name=record.name)
    return web.Response(status=204)


async def _forget_removed(ctx: DockerApiContext) -> None:
    """Drop endpoints of containers that are gone (removed while the API was down)."""
    existing = {view.info.id for view in await _views(ctx)}
    store = ctx.network_store()
    for container_id in list(store.endpoints):
        if container_id not in existing:
            store.forget_container(container_id)


async def _container(ctx: DockerApiContext, ref: str) -> ContainerView:
    if not ref:
        raise bad_request("Container: a container is required")
    try:
        return await ctx.require_containers().inspect(ref)
    except ApiError as exc:
        raise from_api_error(exc, f"No such container: {ref}") from None


async def _cluster_refusal(
    ctx: DockerApiContext, ref: str, body: dict[str, Any], action: str
) -> DockerApiError | None:
    """What ``connect``/``disconnect`` answer for a network that is none of this node's
    (a cluster network: a container joins it at create, and leaves it when removed);
    None for the node's own networks (or an agent without a controller session)."""
    if ctx.attacher is None or is_local(ctx, ref):
        return None
    view = await _container(ctx, str(body.get("Container") or ""))
    name = view.info.name
    if ref in cluster_networks.endpoints(ctx, view) and action == "connect":
        return forbidden(f"endpoint with name {name} already exists in network {ref}")
    if action == "connect":
        return not_implemented(
            f"connecting container {name} to network {ref} is not supported by dockyard: "
            f"it is none of this node's networks, and a container joins a cluster network "
            f"at create (docker run --network {ref})"
        )
    return not_implemented(
        f"disconnecting container {name} from network {ref} is not supported by dockyard: "
        "a container leaves a cluster network when it is removed"
    )


async def _connect(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    body = await _json_body(request)
    if refusal := await _cluster_refusal(ctx, request.match_info["id"], body, "connect"):
        raise refusal
    name, record = resolve_network(ctx, request.match_info["id"])
    view = await _container(ctx, str(body.get("Container") or ""))
    if record is None:
        if view.info.config.network == name and not ctx.network_store().of(view.info.id):
            return web.Response(status=200)
        raise not_implemented(
            f"connecting container {view.info.name} to network {name} is not supported by "
            "dockyard: a container has one network, chosen at create"
        )
    own = view.info.config.local_network
    if record.subnet and (own is None or own.network_id != record.id):
        raise not_implemented(
            f"connecting container {view.info.name} to network {record.name} is not "
            "supported by dockyard: a container is on the one network it was created on"
        )
    if own is not None and own.network_id != record.id:
        raise not_implemented(
            f"container {view.info.name} is on network {own.network_id[:12]}, a bridge of "
            f"its own: it cannot join network {record.name} too"
        )
    if view.info.config.network != "bridge":
        raise forbidden(
            f"container {view.info.name} runs on network {view.info.config.network}: only "
            "bridge containers can join a user-defined network"
        )
    endpoint = body.get("EndpointConfig") or {}
    aliases = endpoint.get("Aliases") if isinstance(endpoint, dict) else None
    if aliases is not None and (
        not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases)
    ):
        raise bad_request("EndpointConfig.Aliases: a list of names")
    try:
        ctx.network_store().connect(view.info.id, record.id, list(aliases or []))
    except NetworkStoreError as exc:
        raise bad_request(str(exc)) from None
    _publish(ctx, "connect", record.id, name=record.name, container=view.info.id)
    return web.Response(status=200)


async def _disconnect(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    body = await _json_body(request)
    if refusal := await _cluster_refusal(ctx, request.match_info["id"], body, "disconnect"):
        raise refusal
    name, record = resolve_network(ctx, request.match_info["id"])
    view = await _container(ctx, str(body.get("Container") or ""))
    if record is None:
        raise not_implemented(
            f"disconnecting container {view.info.name} from network {name} is not supported "
            "by dockyard"
        )
    if not ctx.network_store().disconnect(view.info.id, record.id):
        raise forbidden(f"container {view.info.name} is not connected to network {record.name}")
    _publish(ctx, "disconnect", record.id, name=record.name, container=view.info.id)
    return web.Response(status=200)


async def _prune(request: web.Request, ctx: DockerApiContext) -> web.StreamResponse:
    filters = parse_filters(request.query.get("filters"))
    if set(filters) - {"label"}:
        raise bad_request(f"invalid filter '{sorted(set(filters) - {'label'})[0]}'")
    await _forget_removed(ctx)
    store = ctx.network_store()
    deleted = []
    for record in list(store.networks.values()):
        shown = _network_json(ctx, record.name, record, [])
        if store.users(record.id) or not _matches(shown, filters):
            continue
        async with _networks_lock(ctx):
            await _drop_network(ctx, record)
        deleted.append(record.name)
        _publish(ctx, "destroy", record.id, name=record.name)
    return json_response({"NetworksDeleted": deleted or None})


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


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The network endpoints."""
    routes.get("/networks")(with_context(ctx, _list))
    routes.post("/networks/create")(with_context(ctx, _create))
    routes.post("/networks/prune")(with_context(ctx, _prune))
    routes.get("/networks/{id}")(with_context(ctx, _inspect))
    routes.delete("/networks/{id}")(with_context(ctx, _remove))
    routes.post("/networks/{id}/connect")(with_context(ctx, _connect))
    routes.post("/networks/{id}/disconnect")(with_context(ctx, _disconnect))


def lifespan(
    ctx: DockerApiContext,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """While the API serves: the node's DNS runs, and holds the names of the containers
    on user-defined networks, renewed on every container and network event."""

    @contextlib.asynccontextmanager
    async def serve(app: web.Application) -> AsyncIterator[None]:
        bus = event_bus(ctx)
        if bus is None or ctx.cluster_network is None:
            yield
            return
        try:
            await _declare(ctx)
        except NetworkError as exc:
            log.error("dockerapi.network_declare_failed", error=str(exc))
        await ctx.cluster_network.serve_dns()
        subscription = bus.subscribe()
        loops = TaskScope("dockerapi-networks")  # a loop that fails is logged (task.failed)
        await loops.open()
        loops.spawn(_keep_names(ctx, subscription), "dockerapi-dns")
        loops.spawn(cluster_networks.release_gone(ctx), "dockerapi-prune")
        try:
            yield
        finally:
            subscription.close()
            await loops.close()

    return serve


async def _keep_names(ctx: DockerApiContext, subscription: Subscription) -> None:
    assert ctx.cluster_network is not None
    await _renew_names(ctx)
    while True:
        event = await subscription.get()
        if event.type not in ("container", "network") or event.action not in _DNS_ACTIONS:
            continue
        if event.type == "container" and event.action == "destroy":
            ctx.network_store().forget_container(event.actor_id)
            await cluster_networks.on_destroy(ctx, event.actor_id)
        await _renew_names(ctx)


async def _renew_names(ctx: DockerApiContext) -> None:
    assert ctx.cluster_network is not None
    views = await _views(ctx)
    records = {
        name: addresses
        for name, addresses in dns_records(ctx, views).items()
        if all(_is_ipv4(a) for a in addresses)
    }
    await ctx.cluster_network.set_local_records(records)
    ctx.cluster_network.set_local_names(local_names(ctx, views))
    log.debug("dockerapi.dns_names", names=len(records))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# ----- what container create, inspect and list ask of the networks -----------------------


def prepare_create(ctx: DockerApiContext, body: Any) -> tuple[Any, NetworkRecord | None, list[str]]:
    """A create body whose `HostConfig.NetworkMode` names a user-defined network: the body
    with `bridge` in its place, that network, and the aliases asked for on it
    (`NetworkingConfig.EndpointsConfig[network].Aliases`). Other bodies pass unchanged.

    Raises:
        DockerApiError: 400 for malformed aliases.
    """
    if not isinstance(body, dict):
        return body, None, []
    host = body.get("HostConfig")
    mode = host.get("NetworkMode") if isinstance(host, dict) else None
    if not isinstance(mode, str) or mode in ("", "default", *BUILTIN) or ":" in mode:
        return body, None, []
    assert isinstance(host, dict)
    try:
        name, record = resolve_network(ctx, mode)
    except DockerApiError:  # no such network: create's own 400 (a 404 means "no image")
        return body, None, []
    if record is None:  # a predefined network named by its id
        return {**body, "HostConfig": {**host, "NetworkMode": name}}, None, []
    aliases: list[str] = []
    networking = body.get("NetworkingConfig")
    endpoints = networking.get("EndpointsConfig") if isinstance(networking, dict) else None
    if isinstance(endpoints, dict):
        for key in (mode, record.name, record.id):
            endpoint = endpoints.get(key)
            if isinstance(endpoint, dict) and endpoint.get("Aliases"):
                found = endpoint["Aliases"]
                if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
                    raise bad_request("NetworkingConfig.EndpointsConfig.Aliases: a list of names")
                aliases = list(found)
    return {**body, "HostConfig": {**host, "NetworkMode": "bridge"}}, record, aliases


def join_created(
    ctx: DockerApiContext, container_id: str, record: NetworkRecord | None, aliases: list[str]
) -> None:
    """Record a new container on the user-defined network its create body named."""
    if record is None:
        return
    try:
        ctx.network_store().connect(container_id, record.id, aliases)
    except NetworkStoreError as exc:
        raise bad_request(str(exc)) from None
    _publish(ctx, "connect", record.id, name=record.name, container=container_id)


def decorate(ctx: DockerApiContext, view: ContainerView, body: dict[str, Any]) -> dict[str, Any]:
    """An inspect body or a list row with the container's user-defined networks in
    `NetworkSettings.Networks` and `HostConfig.NetworkMode` (its cluster networks in
    their place for a container attached to them)."""
    attached = cluster_networks.endpoints(ctx, view)
    if attached:
        return _show_networks(body, attached)
    memberships = ctx.network_store().of(view.info.id)
    if not memberships:
        return body
    settings = body.get("NetworkSettings")
    if isinstance(settings, dict):
        settings["Networks"] = container_networks(ctx, view)
    host = body.get("HostConfig")
    if isinstance(host, dict):
        host["NetworkMode"] = memberships[0][0].name
    return body


def _show_networks(body: dict[str, Any], networks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    settings = body.get("NetworkSettings")
    if isinstance(settings, dict):
        settings["Networks"] = networks
    host = body.get("HostConfig")
    if isinstance(host, dict):
        host["NetworkMode"] = next(iter(networks))
    return body
