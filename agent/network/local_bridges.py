"""``LocalBridges``: a node's user-defined networks, each a Linux bridge and subnet of
its own (Docker's user-defined bridge networks), isolated from each other.

Each network is a :class:`~dockyard.agent.network.bridge.BridgeNetwork` of its own (the
same CNI plugins, its own ``host-local`` reservations and records under
``<network state>/local/<id>/``, with ``network.json`` saying which network it is, so a
restarted agent finds the records of removed containers and releases them).

Isolation, as Docker's ``DOCKER-ISOLATION`` chains: one nftables table of this agent,
``ip dy-iso-<node bridge>``, on the ``forward`` hook drops what one of these bridges
forwards to another one or to the node's bridge (both ways); an ``internal`` network's
traffic never leaves its bridge. A drop in any base chain is final in nftables, so the
bridge plugins' iptables ``ACCEPT`` rules cannot let it through. The table is replaced
whole in one ``nft -j -f -`` transaction whenever the set of networks changes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dockyard.agent.network.attachments import Attachment
from dockyard.agent.network.bridge import LOCK_DIR, BridgeConfig, BridgeNetwork
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.nft import run_nft
from dockyard.agent.runtime.base import LocalBridge, NetworkInfo, PortMapping
from dockyard.common.atomic_file import write_atomic

__all__ = ["LocalBridges", "isolation_ruleset", "local_bridge_name"]

log = structlog.get_logger(__name__)

SPEC_FILE = "network.json"


def local_bridge_name(network_id: str) -> str:
    """``dyn-`` and the first 10 hex characters of the network's id (15 at most)."""
    return f"dyn-{network_id[:10]}"


def table_name(node_bridge: str) -> str:
    """This agent's isolation table (agents sharing a host each have their own)."""
    return f"dy-iso-{node_bridge}"


def isolation_ruleset(node_bridge: str, networks: Sequence[LocalBridge]) -> dict[str, Any]:
    """The whole isolation table as ``nft -j`` commands (deleted when no network is left).

    For each network's bridge ``B``: what comes in on ``B`` and leaves on another of this
    agent's bridges is dropped, and the other way round; for an ``internal`` one, what
    comes in on ``B`` and leaves on any other interface, and the other way round.
    """
    table = {"family": "ip", "name": table_name(node_bridge)}
    commands: list[dict[str, Any]] = [{"add": {"table": table}}]
    if not networks:
        return {"nftables": [*commands, {"delete": {"table": table}}]}
    commands += [
        {"flush": {"table": table}},
        {
            "add": {
                "chain": {
                    **table,
                    "table": table["name"],
                    "name": "forward",
                    "type": "filter",
                    "hook": "forward",
                    "prio": -1,
                    "policy": "accept",
                }
            }
        },
    ]
    bridges = sorted({node_bridge, *(n.bridge for n in networks)})
    for network in sorted(networks, key=lambda n: n.bridge):
        others = [b for b in bridges if b != network.bridge]
        if network.internal:
            pairs = [("==", "!="), ("!=", "==")]
            for in_op, out_op in pairs:
                commands.append(
                    _drop(
                        table,
                        _meta("iifname", in_op, network.bridge),
                        _meta("oifname", out_op, network.bridge),
                    )
                )
        elif others:
            to_others = {"set": others}
            commands.append(
                _drop(
                    table, _meta("iifname", "==", network.bridge), _meta("oifname", "==", to_others)
                )
            )
            commands.append(
                _drop(
                    table, _meta("iifname", "==", to_others), _meta("oifname", "==", network.bridge)
                )
            )
    return {"nftables": commands}


def _meta(key: str, op: str, right: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def _drop(table: Mapping[str, str], *matches: dict[str, Any]) -> dict[str, Any]:
    rule = {"family": "ip", "table": table["name"], "chain": "forward"}
    return {"add": {"rule": {**rule, "expr": [*matches, {"drop": None}]}}}


async def _nft(ruleset: dict[str, Any]) -> None:
    try:
        code, message = await run_nft(ruleset)
    except RuntimeError as exc:
        raise NetworkError(str(exc)) from None
    if code != 0:
        raise NetworkError(f"nft: {message}")


def _delete_link(name: str) -> None:
    """Delete interface ``name`` (nothing when it does not exist). Blocking."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code != 19:  # ENODEV: gone meanwhile
                raise


class LocalBridges:
    """Attach containers to the node's user-defined networks.

    Args:
        root: ``<agent state>/network``; each network keeps ``local/<id>/``.
        node_bridge: The node's own bridge (isolated from these networks).
        cni_path: Where the CNI plugins are.
    """

    def __init__(self, root: Path, node_bridge: str, cni_path: Sequence[str]) -> None:
        self.root = Path(root) / "local"
        self.node_bridge = node_bridge
        self.cni_path = tuple(cni_path)
        self.nameservers: dict[str, str] = {}
        """Network id -> the DNS server its containers get ("": the host's resolvers)."""
        self._declared: dict[str, LocalBridge] = {}
        self._networks: dict[str, BridgeNetwork] = {}
        self._owner: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- networks

    async def declare(self, networks: Sequence[LocalBridge]) -> None:
        """The node's user-defined networks are exactly ``networks``: the isolation table
        is rewritten for them.

        Raises:
            NetworkError: nft refused the table (its message).
        """
        async with self._lock:
            self._declared = {n.network_id: n for n in networks}
            await _nft(isolation_ruleset(self.node_bridge, list(self._declared.values())))
        log.info("local_networks.declared", networks=[n.bridge for n in networks])

    async def remove(self, network: LocalBridge) -> None:
        """Delete a network's bridge and state (no container may be on it any more).

        Raises:
            NetworkError: a container is still attached to it.
        """
        held = [cid for cid, nid in self._owner.items() if nid == network.network_id]
        if held:
            raise NetworkError(
                f"network {network.network_id[:12]} still has containers: "
                + ", ".join(c[:12] for c in held)
            )
        bridge = self._networks.pop(network.network_id, None)
        if bridge is not None:
            await bridge.close()
        (LOCK_DIR / f"{network.bridge}.lock").unlink(missing_ok=True)
        self.nameservers.pop(network.network_id, None)
        await asyncio.to_thread(_delete_link, network.bridge)
        await asyncio.to_thread(shutil.rmtree, self._dir(network.network_id), True)
        log.info("local_network.removed", bridge=network.bridge, subnet=network.subnet)

    def _dir(self, network_id: str) -> Path:
        return self.root / network_id[:12]

    def _network(self, spec: LocalBridge) -> BridgeNetwork:
        bridge = self._networks.get(spec.network_id)
        if bridge is None:
            config = BridgeConfig(bridge=spec.bridge, subnet=spec.subnet, cni_path=self.cni_path)
            bridge = BridgeNetwork(self._dir(spec.network_id), config, subnet_fixed=True)
            self._networks[spec.network_id] = bridge
        return bridge

    def _remember(self, spec: LocalBridge) -> None:
        """Write ``network.json`` atomically (blocking)."""
        path = self._dir(spec.network_id) / SPEC_FILE
        write_atomic(path, json.dumps(asdict(spec)).encode(), mode=0o600)

    # -------------------------------------------------------------- containers

    async def attach(
        self, container_id: str, ports: Sequence[PortMapping], spec: LocalBridge
    ) -> Attachment:
        """Give the container a namespace on the network's bridge (made on first use).

        Raises:
            NetworkError: the network is not one of the node's, or the plugins failed.
        """
        if spec.network_id not in self._declared:
            raise NetworkError(f"network {spec.network_id[:12]} is not one of this node's")
        await asyncio.to_thread(self._remember, spec)
        attachment = await self._network(spec).attach(container_id, ports)
        self._owner[container_id] = spec.network_id
        return attachment

    def owns(self, container_id: str) -> bool:
        """The container is on one of these networks."""
        return container_id in self._owner

    def nameserver(self, container_id: str) -> str:
        """The DNS server of the container's network ("": none)."""
        return self.nameservers.get(self._owner.get(container_id, ""), "")

    def get(self, container_id: str) -> Attachment | None:
        bridge = self._networks.get(self._owner.get(container_id, ""))
        return bridge.get(container_id) if bridge is not None else None

    def info(self, container_id: str) -> NetworkInfo | None:
        bridge = self._networks.get(self._owner.get(container_id, ""))
        return bridge.info(container_id) if bridge is not None else None

    def check_ports(self, ports: Sequence[PortMapping]) -> None:
        for bridge in self._networks.values():
            bridge.check_ports(ports)

    async def detach(self, container_id: str) -> None:
        network_id = self._owner.pop(container_id, None)
        bridge = self._networks.get(network_id or "")
        if bridge is not None:
            await bridge.detach(container_id)

    async def recover(
        self, keep: Mapping[str, tuple[Sequence[PortMapping], LocalBridge]]
    ) -> set[str]:
        """After an agent start: every network's records again (those of containers not
        in ``keep`` released); the containers whose address changed."""
        specs = {spec.network_id: spec for _, spec in keep.values()}
        specs.update(await asyncio.to_thread(self._stored_specs))
        changed: set[str] = set()
        for network_id, spec in specs.items():
            mine = {cid: ports for cid, (ports, s) in keep.items() if s.network_id == network_id}
            changed |= await self._network(spec).recover(mine)
            self._owner.update(dict.fromkeys(mine, network_id))
        return changed

    def _stored_specs(self) -> dict[str, LocalBridge]:
        found: dict[str, LocalBridge] = {}
        if not self.root.is_dir():
            return found
        for path in self.root.glob(f"*/{SPEC_FILE}"):
            try:
                spec = LocalBridge(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("local_network.unreadable", path=str(path), error=str(exc))
                continue
            found[spec.network_id] = spec
        return found

    async def close(self) -> None:
        """Let go of held ports (bridges, rules and containers stay)."""
        for bridge in self._networks.values():
            await bridge.close()
