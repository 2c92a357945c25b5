"""The ingress routing mesh on a node: a published port on every node's addresses
reaches some task of its service, wherever the task runs.

Swarm's design without IPVS (this kernel has none). In the node's namespace, one
nftables table of ours:

    prerouting/output (nat):  fib daddr type local  tcp dport 8080
                              dnat to numgen random mod N map { 0 : T0, 1 : T1 } : 80
    postrouting (nat):        meta l4proto tcp  ct original proto-dst 8080  ct status dnat
                              snat to SOURCE

The DNAT picks one of the service's running tasks, on any node; the SNAT to this node's
own address on the tasks' network makes the task answer through the node the client
came to, where conntrack undoes both. The backends are the tasks' addresses on the
``ingress`` overlay network (VXLAN), and SOURCE is this node's own address there
(``join_ingress``); where overlays are off, the tasks' cluster (bridge) network
addresses over its host-gw routes, from this node's bridge gateway (a peer subnet for
the other nodes' ``DOCKYARD-PEERS`` rules). The table is replaced whole in one
``nft -f`` transaction (atomic, as the VIPs), and deleted when the agent stops; no other
table of the host is touched.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pyroute2 import NetlinkError

from dockyard.agent.network.nft import run_nft
from dockyard.agent.network.overlay import Netlink, OverlayNetwork, bridge_name, mac_for

__all__ = [
    "TABLE",
    "IngressPort",
    "apply_ingress",
    "ingress_ruleset",
    "join_ingress",
    "port_taken",
    "remove_ingress",
]

log = structlog.get_logger(__name__)

TABLE = "dockyard-ingress"
MAX_BACKENDS = 4096


@dataclass(frozen=True)
class IngressPort:
    """A published port of the mesh and the ingress addresses of its running tasks."""

    published: int
    target: int
    protocol: str = "tcp"
    backends: tuple[str, ...] = ()


def ingress_ruleset(source: str, ports: Iterable[IngressPort]) -> dict[str, Any]:
    """The nftables JSON that makes ``ports`` on this node (replacing the table).

    ``source``: the address meshed connections leave this node from, which the tasks
    answer to (the node's own address on the network the backends are on). A port with
    no running task is rejected (TCP reset / ICMP) rather than left to whatever else
    listens on it: the port belongs to the mesh.

    Raises:
        ValueError: an address or port is malformed, or a port has too many backends.
    """
    source = _ipv4("source address", source)
    table = {"family": "ip", "name": TABLE}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"flush": {"table": table}},
        # Before iptables' nat (-100): on a node that runs a task, the task's own
        # mode=host DNAT (the CNI portmap) would otherwise keep the port to itself.
        _chain("prerouting", "nat", "prerouting", -110),
        _chain("output", "nat", "output", -110),
        _chain("postrouting", "nat", "postrouting", 100),
        _chain("filter", "filter", "input", 0),
    ]
    seen: set[tuple[str, int]] = set()
    meshed: dict[str, list[int]] = {}
    for port in sorted(ports, key=lambda p: (p.protocol, p.published)):
        _check_port(port, seen)
        backends = sorted({_ipv4(f"port {port.published}: backend", b) for b in port.backends})
        if len(backends) > MAX_BACKENDS:
            raise ValueError(f"port {port.published}: {len(backends)} backends, at most 4096")
        match = [_local(), _dport(port.protocol, port.published)]
        if backends:
            dnat = {"dnat": {"addr": _spread(backends), "port": port.target}}
            commands.append(_rule("prerouting", [*match, dnat]))
            commands.append(_rule("output", [_not_loopback(), *match, dnat]))
            meshed.setdefault(port.protocol, []).append(port.published)
        else:
            commands.append(_rule("filter", [*match, _reject(port.protocol)]))
    for protocol, published in sorted(meshed.items()):
        commands.append(_rule("postrouting", [*_meshed(protocol, published), _snat(source)]))
    return {"nftables": commands}


def _meshed(protocol: str, published: list[int]) -> list[dict[str, Any]]:
    """A connection this table DNATed: only those are SNATed (a mode=host port's
    clients keep their address)."""
    l4 = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": protocol}}
    original = {"ct": {"key": "proto-dst", "dir": "original"}}
    right: Any = published[0] if len(published) == 1 else {"set": published}
    port = {"match": {"op": "==", "left": original, "right": right}}
    status = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
    return [l4, port, status]


def _snat(source: str) -> dict[str, Any]:
    return {"snat": {"addr": source}}


def _ipv4(what: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IPv4 address") from None


def _check_port(port: IngressPort, seen: set[tuple[str, int]]) -> None:
    if port.protocol not in ("tcp", "udp"):
        raise ValueError(f"port {port.published}: protocol {port.protocol!r} is not tcp or udp")
    for value in (port.published, port.target):
        if not 0 < value < 65536:
            raise ValueError(f"port {value} is not in 1-65535")
    key = (port.protocol, port.published)
    if key in seen:
        raise ValueError(f"port {port.published}/{port.protocol} given twice")
    seen.add(key)


def _chain(name: str, kind: str, hook: str, priority: int) -> dict[str, Any]:
    chain = {"family": "ip", "table": TABLE, "name": name}
    return {"add": {"chain": {**chain, "type": kind, "hook": hook, "prio": priority}}}


def _local() -> dict[str, Any]:
    """The packet is for one of this node's own addresses."""
    fib = {"fib": {"result": "type", "flags": ["daddr"]}}
    return {"match": {"op": "==", "left": fib, "right": "local"}}


def _not_loopback() -> dict[str, Any]:
    # DNAT of 127.0.0.1 to another host's address is a martian (no route_localnet).
    left = {"payload": {"protocol": "ip", "field": "daddr"}}
    right = {"prefix": {"addr": "127.0.0.0", "len": 8}}
    return {"match": {"op": "!=", "left": left, "right": right}}


def _dport(protocol: str, port: int) -> dict[str, Any]:
    left = {"payload": {"protocol": protocol, "field": "dport"}}
    return {"match": {"op": "==", "left": left, "right": port}}


def _reject(protocol: str) -> dict[str, Any]:
    if protocol == "tcp":
        return {"reject": {"type": "tcp reset"}}
    return {"reject": {"type": "icmp", "expr": "port-unreachable"}}


def _spread(backends: Sequence[str]) -> Any:
    if len(backends) == 1:
        return backends[0]
    pairs = [[index, backend] for index, backend in enumerate(backends)]
    numgen = {"numgen": {"mode": "random", "mod": len(backends), "offset": 0}}
    return {"map": {"key": numgen, "data": {"set": pairs}}}


def _rule(chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
    return {"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}}


async def apply_ingress(
    source: str, ports: Iterable[IngressPort], netns: str | None = None
) -> None:
    """Replace the mesh's rules of this node (``netns``: a named namespace standing for
    the node, in tests) in one transaction.

    Raises:
        ValueError: a malformed port or address (nothing applied).
        RuntimeError: nft refused the ruleset or did not answer (its message).
    """
    ports = list(ports)
    code, message = await run_nft(ingress_ruleset(source, ports), netns)
    if code != 0:
        raise RuntimeError(f"nft ({TABLE}): {message}")
    log.info("ingress.applied", source=source, ports=[f"{p.published}/{p.protocol}" for p in ports])


async def remove_ingress(netns: str | None = None) -> None:
    """Delete the mesh's table (the node leaves the mesh); absent is no error."""
    code, message = await run_nft({"nftables": [{"delete": {"table": _TABLE_REF}}]}, netns)
    if code != 0 and "No such file or directory" not in message:
        raise RuntimeError(f"nft ({TABLE}): {message}")
    log.info("ingress.removed")


_TABLE_REF = {"family": "ip", "name": TABLE}


async def join_ingress(netlink: Netlink, network: OverlayNetwork, address: str) -> None:
    """Give this node ``address`` on the ingress network's bridge (made by
    ``OverlayDevices.ensure``): its end of the mesh's connections. Other nodes list it
    as a peer, like a task's address."""
    await asyncio.to_thread(_join, netlink, network, address)


def _join(netlink: Netlink, network: OverlayNetwork, address: str) -> None:
    prefix = ipaddress.IPv4Network(network.subnet).prefixlen
    with netlink() as ipr:
        found = ipr.link_lookup(ifname=bridge_name(network.vni))
        if not found:
            raise RuntimeError(f"the ingress bridge {bridge_name(network.vni)} does not exist")
        # The MAC other nodes' entries name for this address (``mac_for``, as a task's).
        ipr.link("set", index=found[0], address=mac_for(address))
        try:
            ipr.addr("add", index=found[0], address=address, prefixlen=prefix)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise RuntimeError(f"netlink (ingress address {address}): {exc}") from exc


def port_taken(protocol: str, port: int) -> str | None:
    """Why this node's ``port`` cannot be the mesh's (something else holds it), or None.

    The mesh's DNAT would silently take the port from a local listener, so a node
    reports the clash (naming the port) instead of shadowing it.
    """
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"published port {port}/{protocol} is already in use on this node"
            raise
    return None
