"""Virtual IPs inside a container's network namespace: nftables DNAT to the backends.

Docker puts an IPVS service in each container's sandbox for every VIP the container may
reach; kube-proxy's nftables mode writes ``numgen random mod N`` DNAT maps. This node's
kernel has no IPVS (no ``ip_vs`` module), so a VIP here is one nftables rule in the
container's own namespace, on the ``output`` hook (the container's own connections):

    ip daddr VIP dnat to numgen random mod N map { 0 : B0, 1 : B1, ... }

- Every port of the VIP goes to the same port of a backend (a Swarm VIP forwards any
  port, as its IPVS fwmark service does).
- The whole table is replaced in one ``nft -f`` transaction (``flush table`` and the new
  rules together), so a change is atomic: no connection ever sees a half-written map.
  Connections already set up keep their backend through conntrack; a removed backend
  gets no new connection from the moment the table is replaced.
- A VIP with no backend is rejected (ICMP port unreachable) instead of timing out.

The ruleset is built as JSON (``nft -j``): the Python bindings (``python3-nftables``)
exist only for Debian's own interpreter, not the agent's virtualenv, and ``nft``'s JSON
input is the same schema they take. It runs as ``nsenter --net=<netns> nft -j -f -``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from dockyard.agent.network.nft import run_nft

__all__ = ["TABLE", "VirtualIP", "apply_vips", "vip_ruleset"]

log = structlog.get_logger(__name__)

TABLE = "dockyard-vip"
MAX_BACKENDS = 4096


@dataclass(frozen=True)
class VirtualIP:
    """A service's VIP on one network and its running tasks' addresses there."""

    address: str
    backends: tuple[str, ...]


def vip_ruleset(vips: Iterable[VirtualIP]) -> dict[str, Any]:
    """The nftables JSON that makes ``vips`` (replacing what the table held).

    Raises:
        ValueError: an address is not IPv4, or a VIP has too many backends.
    """
    table = {"family": "ip", "name": TABLE}
    commands: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"flush": {"table": table}},
        {"add": {"chain": {**table, "table": TABLE, "name": "nat", **_hook("nat", -100)}}},
        {"add": {"chain": {**table, "table": TABLE, "name": "filter", **_hook("filter", 0)}}},
    ]
    for vip in sorted(vips, key=lambda v: v.address):
        address = str(ipaddress.IPv4Address(vip.address))
        backends = sorted({str(ipaddress.IPv4Address(b)) for b in vip.backends})
        if len(backends) > MAX_BACKENDS:
            raise ValueError(f"VIP {address}: {len(backends)} backends, at most {MAX_BACKENDS}")
        match = _daddr(address)
        if backends:
            commands.append(_rule("nat", [match, {"dnat": {"addr": _spread(backends)}}]))
        else:
            reject = {"reject": {"type": "icmp", "expr": "port-unreachable"}}
            commands.append(_rule("filter", [match, reject]))
    return {"nftables": commands}


def _hook(kind: str, priority: int) -> dict[str, Any]:
    return {"type": kind, "hook": "output", "prio": priority, "policy": "accept"}


def _daddr(address: str) -> dict[str, Any]:
    left = {"payload": {"protocol": "ip", "field": "daddr"}}
    return {"match": {"op": "==", "left": left, "right": address}}


def _spread(backends: Sequence[str]) -> Any:
    if len(backends) == 1:
        return backends[0]
    pairs = [[index, backend] for index, backend in enumerate(backends)]
    numgen = {"numgen": {"mode": "random", "mod": len(backends), "offset": 0}}
    return {"map": {"key": numgen, "data": {"set": pairs}}}


def _rule(chain: str, expr: list[dict[str, Any]]) -> dict[str, Any]:
    return {"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}}


async def apply_vips(netns: str, vips: Iterable[VirtualIP]) -> None:
    """Replace the VIPs of the named network namespace ``netns`` in one transaction.

    Raises:
        RuntimeError: nft refused the ruleset or did not answer (its message).
    """
    code, message = await run_nft(vip_ruleset(vips), netns)
    if code != 0:
        raise RuntimeError(f"nft in {netns}: {message}")
    log.debug("vip.applied", netns=netns)
