"""``PeerRoutes``: routes and iptables rules to the other nodes' container subnets.

Each agent owns a bridge with its own subnet (``10.87.3.0/24``). For a container on one
host to reach a container on another by its address, the agents work in "host-gw" mode,
as flannel's backend of that name: no overlay, no encapsulation, just one plain route
per peer node in the host's network namespace,

    ip route add 10.87.4.0/24 via <the peer host's address> proto 77

which works as long as the nodes share a layer-2 segment (or a router that knows the
subnets). ``proto 77`` is a routing protocol number nobody else uses: it marks the routes
as ours, so ``ip -4 route show proto 77`` finds them back and a sync removes the ones no
longer wanted without touching the host's own routes.

Two iptables chains, both called ``DOCKYARD-PEERS``, let that traffic through untouched:

- ``filter``: the CNI bridge plugin and Docker leave ``FORWARD`` with a DROP policy (or a
  final DROP rule) on many hosts, which would drop a packet from a peer's container to
  one of ours; the chain ACCEPTs local<->peer subnet traffic, jumped to first thing in
  ``FORWARD``;
- ``nat``: the bridge plugin (``ipMasq``) MASQUERADEs whatever leaves the local subnet;
  between nodes that would hide the container's address behind the host's, so the chain
  ACCEPTs local->peer traffic, jumped to first thing in ``POSTROUTING``: in the ``nat``
  table ACCEPT means "no NAT" and ends the chain, so the MASQUERADE rules further down
  are never reached. (Not RETURN: that only leaves our chain, and POSTROUTING would go
  on to the MASQUERADE.) The peer sees the real source address and answers it directly.
  A flow masqueraded before the rule existed stays so until its conntrack entry expires.

Every sync rewrites both chains in one ``iptables-restore --noflush`` per table: declaring
``:DOCKYARD-PEERS - [0:0]`` in that input flushes just that chain, and the refill (and a
jump put back at the top) is applied atomically. Nothing is rewritten when the rules
are already the wanted ones.

A peer is left alone (logged) when its address is no usable host address (or is one of
ours), when its subnet overlaps the local one or another peer's, when its subnet holds
another peer's host address (its route would draw the traffic to that host), or when
this namespace already has a route of its own for that subnet: two agents sharing a host
(a local test cluster) have each other's bridge as a connected route, and that works
without us.

Our routes never displace another's: a new one is added with ``ip route add`` (the
kernel's ``NLM_F_EXCL``: it fails when a route for that destination and metric exists,
also one made after we looked), and only a route that is already ours is replaced (its
next hop moved). A broader route (the default route, a LAN aggregate through a gateway)
is no conflict: ours is the more specific one, as intended, and the controller refuses a
node subnet that covers a controller's, etcd's or a node's address.

The host still has to forward (``net.ipv4.ip_forward=1``, which the bridge plugin's
``isGateway`` sets). One ``PeerRoutes`` manages one network namespace: the routes and
chains are shared by everything in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.netns import ip_command
from dockyard.common.validation import check_subnet

__all__ = ["CHAIN", "COMMENT", "ROUTE_PROTO", "PeerRoute", "PeerRoutes", "iptables_command"]

log = structlog.get_logger(__name__)

ROUTE_PROTO = "77"
"""The routing protocol number of our routes (``ip route ... proto 77``)."""
CHAIN = "DOCKYARD-PEERS"
"""The chain's name, in both the ``filter`` and the ``nat`` table."""
COMMENT = "dockyard peer route"
"""``-m comment --comment`` of every rule we add."""

_JUMPS = {"filter": "FORWARD", "nat": "POSTROUTING"}
"""Per table, the built-in chain whose first rule jumps to ours."""
_TIMEOUT = 30.0
_PERMISSION = ("Operation not permitted", "Permission denied")


@dataclass(frozen=True, slots=True)
class PeerRoute:
    """Another node's container subnet and its host's address (the next hop)."""

    node_id: str
    subnet: str
    """``10.87.4.0/24``."""
    via: str
    """The peer host's IPv4 address."""


# --------------------------------------------------------------------- commands


async def iptables_command(
    *args: str, check: bool = True, tool: str = "iptables", stdin: str | None = None
) -> tuple[int, str, str]:
    """Run ``iptables ARGS`` (or ``tool``, e.g. ``iptables-restore``, fed ``stdin``);
    ``(status, stdout, stderr)``. It is killed when cancelled or after 30 seconds.

    Raises:
        NetworkError: it failed (with ``check``), could not run or did not finish in time.
    """
    binary = shutil.which(tool) or f"/usr/sbin/{tool}"
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NetworkError(f"cannot run {tool} (install iptables): {exc}") from exc
    data = stdin.encode() if stdin is not None else None
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), _TIMEOUT)
    except TimeoutError:
        await _kill(proc)
        raise NetworkError(f"{tool} {' '.join(args)} did not finish in {_TIMEOUT:.0f}s") from None
    except BaseException:
        await _kill(proc)
        raise
    code = proc.returncode or 0
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace").strip()
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith("Try `"))
    if check and code != 0:
        raise NetworkError(
            f"{tool} {' '.join(args)} failed ({code}): {stderr}{_failed_line(stdin, stderr)}"
        )
    return code, stdout, stderr


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await asyncio.shield(proc.wait())


def _failed_line(stdin: str | None, stderr: str) -> str:
    """What of the input iptables-restore refused: `` (input line N: ...)`` when it names
    a line, else the whole input (iptables-nft names the ``COMMIT`` whatever failed)."""
    if stdin is None:
        return ""
    lines = stdin.splitlines()
    match = re.search(r"line:? (\d+)", stderr)
    number = int(match.group(1)) if match else 0
    if 0 < number <= len(lines) and lines[number - 1] != "COMMIT":
        return f" (input line {number}: {lines[number - 1]})"
    return f" (input: {' | '.join(lines)[:2000]})"


# ----------------------------------------------------------------- the routes


@dataclass(frozen=True, slots=True)
class _Route:
    """One route of the main table, as ``ip -N -j route`` shows it."""

    dst: ipaddress.IPv4Network
    proto: str
    gateway: bool
    """It goes through a next hop (``via``), rather than out of a link (connected)."""
    via: str
    """The next hop's address, ``""`` when there is none (or several)."""
    metric: int | None
    text: str
    """``10.87.4.0/24 dev dockyard1 proto 2`` (for the log)."""


async def _main_routes() -> list[_Route]:
    """The IPv4 routes of the main table; protocols as numbers."""
    _, out, _ = await ip_command("-N", "-j", "-4", "route", "show", "table", "main")
    routes = []
    for entry in _json_list(out):
        dst = str(entry.get("dst", ""))
        try:
            network = ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst, strict=False)
        except ValueError:
            continue
        metric = entry.get("metric")
        words = [
            dst,
            *(f"{key} {entry[key]}" for key in ("gateway", "dev", "protocol") if key in entry),
        ]
        routes.append(
            _Route(
                dst=network,
                proto=str(entry.get("protocol", "")),
                gateway=any(key in entry for key in ("gateway", "nexthops", "nhid")),
                via=str(entry.get("gateway", "")),
                metric=metric if isinstance(metric, int) else None,
                text=" ".join(words),
            )
        )
    return routes


async def _host_addresses() -> set[ipaddress.IPv4Address]:
    """Every IPv4 address of this namespace's interfaces."""
    _, out, _ = await ip_command("-j", "-4", "addr", "show")
    found = set()
    for link in _json_list(out):
        for info in link.get("addr_info", []):
            try:
                found.add(ipaddress.IPv4Address(str(info.get("local", ""))))
            except ValueError:
                continue
    return found


def _json_list(text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise NetworkError(f"cannot read the output of ip -j: {exc}") from None
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _conflict(subnet: ipaddress.IPv4Network, routes: Sequence[_Route]) -> _Route | None:
    """A route not ours that already covers (part of) ``subnet``.

    A broader route through a gateway (the default route, a LAN or VPN aggregate) is no
    conflict: ours is the more specific one, as intended. Any other overlapping route
    is: a connected one (the peer's bridge in this very namespace), or one as specific.
    """
    for route in routes:
        if route.proto == ROUTE_PROTO or route.dst.prefixlen == 0:
            continue
        if not route.dst.overlaps(subnet):
            continue
        if route.gateway and route.dst.prefixlen < subnet.prefixlen:
            continue
        return route
    return None


async def _install_route(
    subnet: ipaddress.IPv4Network, via: ipaddress.IPv4Address, ours: bool
) -> str:
    """``ip route add SUBNET via VIA proto 77`` (``replace`` when ``ours``: the route there
    is already ours); ``""`` or the error of a bad peer (or of a route that is not ours
    and came first: ``add`` never replaces one).

    Raises:
        NetworkError: ip cannot run, or is not allowed to change routes.
    """
    verb = "replace" if ours else "add"
    args = ("route", verb, str(subnet), "via", str(via), "proto", ROUTE_PROTO)
    code, _, err = await ip_command(*args, check=False)
    if code == 0:
        return ""
    if any(word in err for word in _PERMISSION):
        raise NetworkError(f"ip {' '.join(args)} failed ({code}): {err}")
    return err or f"exit status {code}"


async def _delete_route(route: _Route) -> None:
    """Remove one of our routes; nothing when it is gone already.

    Raises:
        NetworkError: it is there and cannot be removed.
    """
    args = ["route", "del", str(route.dst), "proto", ROUTE_PROTO, "table", "main"]
    if route.metric is not None:
        args += ["metric", str(route.metric)]
    code, _, err = await ip_command(*args, check=False)
    if code != 0 and "No such process" not in err:
        raise NetworkError(f"ip {' '.join(args)} failed ({code}): {err}")


# ------------------------------------------------------------------- iptables


def _format(*parts: str) -> str:
    """One rule as ``iptables -S`` shows it (and ``iptables-restore`` reads it)."""
    return " ".join(f'"{p}"' if " " in p else p for p in parts)


def _rule(chain: str, *match: str, target: str) -> str:
    """``-A CHAIN MATCH -m comment --comment "…" -j TARGET``."""
    return _format("-A", chain, *match, "-m", "comment", "--comment", COMMENT, "-j", target)


def _wanted_rules(
    local: ipaddress.IPv4Network, peers: Sequence[ipaddress.IPv4Network]
) -> dict[str, list[str]]:
    """Per table, the rules of our chain for ``peers`` (in ``-S`` form)."""
    filter_rules, nat_rules = [], []
    for peer in peers:
        filter_rules.append(_rule(CHAIN, "-s", str(peer), "-d", str(local), target="ACCEPT"))
        filter_rules.append(_rule(CHAIN, "-s", str(local), "-d", str(peer), target="ACCEPT"))
        nat_rules.append(_rule(CHAIN, "-s", str(local), "-d", str(peer), target="ACCEPT"))
    return {"filter": filter_rules, "nat": nat_rules}


@dataclass(frozen=True, slots=True)
class _TableState:
    """Our part of one table, as ``iptables -S`` shows it."""

    exists: bool
    """The chain is there."""
    rules: list[str]
    """The chain's rules."""
    jumps: list[int]
    """Positions (0-based) of the jumps to it in the built-in chain."""
    jump_lines: list[str]


async def _table_state(table: str) -> _TableState:
    _, out, _ = await iptables_command("-w", "-t", table, "-S")
    builtin = _JUMPS[table]
    exists, rules, jumps, jump_lines, position = False, [], [], [], 0
    for line in out.splitlines():
        words = line.split()
        if words[:2] == ["-N", CHAIN]:
            exists = True
        elif words[:2] == ["-A", CHAIN]:
            rules.append(line.strip())
        elif words[:2] == ["-A", builtin]:
            if _jumps_to_chain(line):
                jumps.append(position)
                jump_lines.append(line.strip())
            position += 1
    return _TableState(exists, rules, jumps, jump_lines)


def _jumps_to_chain(line: str) -> bool:
    try:
        words = shlex.split(line)
    except ValueError:
        return False
    return any(
        a in ("-j", "--jump", "-g", "--goto") and b == CHAIN for a, b in itertools.pairwise(words)
    )


def _jump_line(table: str) -> str:
    """Insert the jump to our chain as the built-in chain's first rule."""
    return _format("-I", _JUMPS[table], "1", "-m", "comment", "--comment", COMMENT, "-j", CHAIN)


def _deletions(state: _TableState) -> list[str]:
    """``-D`` of every jump to our chain (as listed, so also a foreign-looking one)."""
    return ["-D" + line[2:] for line in state.jump_lines]


async def _restore(table: str, lines: Sequence[str]) -> None:
    text = "\n".join([f"*{table}", *lines, "COMMIT", ""])
    await iptables_command("--noflush", "-w", tool="iptables-restore", stdin=text)


async def _write_table(table: str, rules: Sequence[str]) -> bool:
    """Make our chain of ``table`` hold exactly ``rules``, jumped to once, first.
    ``True`` when something changed."""
    state = await _table_state(table)
    if state.exists and state.rules == list(rules) and state.jumps == [0]:
        return False
    lines = [f":{CHAIN} - [0:0]", *(f"-A{rule[2:]}" for rule in rules)]
    if state.jumps != [0]:
        lines += [*_deletions(state), _jump_line(table)]
    await _restore(table, lines)
    return True


async def _remove_table(table: str) -> bool:
    """Remove our chain of ``table`` and the jumps to it; ``True`` when there was one."""
    state = await _table_state(table)
    if not state.exists and not state.jumps:
        return False
    lines = [*_deletions(state)]
    if state.exists:
        lines += [f":{CHAIN} - [0:0]", f"-X {CHAIN}"]
    await _restore(table, lines)
    return True


# ----------------------------------------------------------------- PeerRoutes


class PeerRoutes:
    """Keeps this host's routes and iptables rules to the other nodes' subnets."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        """One sync or clear at a time."""
        self._reported: dict[tuple[str, str, str], str] = {}
        """Why each skipped peer was skipped, as last logged (so a sync does not repeat
        itself every time)."""

    async def sync(self, local_subnet: str, peers: Sequence[PeerRoute]) -> list[PeerRoute]:
        """Make the routes and rules exactly those for ``peers`` (minus the skipped ones);
        return the peers now routed. Idempotent; safe to call often.

        A peer whose route the kernel refuses (its address not reachable: "Nexthop has
        invalid gateway") is logged and skipped; the others are routed.

        Raises:
            NetworkError: ``local_subnet`` is no usable subnet, or a command failed (the
                message names it and its error).
        """
        try:
            local = check_subnet(local_subnet)
        except ValueError as exc:
            raise NetworkError(f"local subnet: {exc}") from None
        async with self._lock:
            routes = await _main_routes()
            own = await _host_addresses()
            chosen = self._choose(local, peers, routes, own)
            routed: list[tuple[PeerRoute, ipaddress.IPv4Network]] = []
            before = {r.dst: r.via for r in routes if r.proto == ROUTE_PROTO}
            for peer, subnet, via in chosen:
                error = await _install_route(subnet, via, subnet in before)
                if error:
                    self._skip(peer, f"the route was refused: {error}", warn=True)
                    continue
                routed.append((peer, subnet))
                if before.get(subnet) != str(via):
                    log.info(
                        "peer.route_set",
                        node_id=peer.node_id,
                        subnet=str(subnet),
                        via=str(via),
                        previous_via=before.get(subnet, ""),
                    )
            keep = {subnet for _, subnet in routed}
            for route in routes:
                if route.proto == ROUTE_PROTO and route.dst not in keep:
                    await _delete_route(route)
                    log.info("peer.route_removed", subnet=str(route.dst))
            if routed:
                wanted = _wanted_rules(local, [subnet for _, subnet in routed])
                for table, rules in wanted.items():
                    if await _write_table(table, rules):
                        log.info("peer.rules_written", table=table, chain=CHAIN, peers=len(routed))
            else:
                await self._remove_rules()
            skipped = {_key(p) for p in peers} - {_key(peer) for peer, _ in routed}
            self._reported = {k: v for k, v in self._reported.items() if k in skipped}
            return [peer for peer, _ in routed]

    async def clear(self) -> None:
        """Remove every proto-77 route, both ``DOCKYARD-PEERS`` chains and the jumps to
        them. Nothing if none exist.

        Raises:
            NetworkError: a command failed.
        """
        async with self._lock:
            for route in await _main_routes():
                if route.proto == ROUTE_PROTO:
                    await _delete_route(route)
                    log.info("peer.route_removed", subnet=str(route.dst))
            await self._remove_rules()
            self._reported.clear()

    # ----------------------------------------------------------------- helpers

    @staticmethod
    async def _remove_rules() -> None:
        for table in _JUMPS:
            if await _remove_table(table):
                log.info("peer.rules_removed", table=table, chain=CHAIN)

    def _choose(
        self,
        local: ipaddress.IPv4Network,
        peers: Sequence[PeerRoute],
        routes: Sequence[_Route],
        own: set[ipaddress.IPv4Address],
    ) -> list[tuple[PeerRoute, ipaddress.IPv4Network, ipaddress.IPv4Address]]:
        """The peers to route, with their parsed subnet and address; the others are
        logged with the reason."""
        chosen: list[tuple[PeerRoute, ipaddress.IPv4Network, ipaddress.IPv4Address]] = []
        for peer in peers:
            reason, subnet, via = _check_peer(peer, local, own)
            if subnet is not None and via is not None and not reason:
                other = next((p for p, s, _ in chosen if s.overlaps(subnet)), None)
                captured = next(
                    (p for p in peers if p is not peer and _address_in(p.via, subnet)), None
                )
                conflict = _conflict(subnet, routes)
                if other is not None:
                    reason = f"its subnet overlaps node {other.node_id}'s {other.subnet}"
                elif captured is not None:
                    reason = (
                        f"its subnet holds node {captured.node_id}'s host address {captured.via}"
                    )
                elif conflict is not None:
                    reason = f"its subnet is already routed here: {conflict.text}"
            if reason or subnet is None or via is None:
                self._skip(peer, reason)
                continue
            chosen.append((peer, subnet, via))
        return chosen

    def _skip(self, peer: PeerRoute, reason: str, warn: bool = False) -> None:
        key = _key(peer)
        if self._reported.get(key) == reason:
            return
        self._reported[key] = reason
        report = log.warning if warn else log.info
        report(
            "peer not routed", node_id=peer.node_id, subnet=peer.subnet, via=peer.via, reason=reason
        )


def _address_in(address: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.IPv4Address(address) in subnet
    except ValueError:
        return False


def _key(peer: PeerRoute) -> tuple[str, str, str]:
    return peer.node_id, peer.subnet, peer.via


def _check_peer(
    peer: PeerRoute, local: ipaddress.IPv4Network, own: set[ipaddress.IPv4Address]
) -> tuple[str, ipaddress.IPv4Network | None, ipaddress.IPv4Address | None]:
    """``(reason not to route it or "", subnet, address)``."""
    try:
        via = ipaddress.IPv4Address(peer.via)
    except ValueError:
        return f"its address {peer.via!r} is not an IPv4 address", None, None
    if (
        via.is_loopback
        or via.is_unspecified
        or via.is_multicast
        or (via == ipaddress.IPv4Address("255.255.255.255"))
    ):
        return f"its address {via} is not a host address", None, None
    if via in own:
        return f"its address {via} is this host's own", None, None
    if via in local:
        return f"its address {via} is inside the local subnet {local}", None, None
    try:
        subnet = check_subnet(peer.subnet)
    except ValueError as exc:
        return f"its subnet is not usable: {exc}", None, None
    if subnet.overlaps(local):
        return f"its subnet overlaps the local subnet {local}", None, None
    return "", subnet, via
