"""Overlay networks on one node: a Linux bridge and a VXLAN device per network, a veth
into each container that joins it, and static forwarding entries for remote containers.

As Docker's overlay driver (libnetwork ``drivers/overlay``) does it, but with every
remote entry pushed from the controller's view instead of learned or gossiped:

- ``dyb-<vni>``: a bridge with no address (the host takes no part in the network, so
  two networks on one host never route to each other); ``dyv-<vni>``: its VXLAN port
  (``learning off``: no source-address learning, ``proxy on``: ARP requests for remote
  containers are answered by the VXLAN device itself from its neighbour table, so no
  broadcast ever crosses hosts), UDP 4789, over the node's underlay address.
- For each remote container: a permanent neighbour entry (its address -> its MAC) and a
  permanent FDB entry (its MAC -> its host's underlay address) on the VXLAN device.
  No multicast group, no flooding to every host.
- For each local container on the network: a veth pair, one end a port of the bridge,
  the other moved into the container's namespace with its address on the network.

**Agents sharing one namespace** (``shared``: several agents on one machine, whose
addresses the controller sees as loopback: ``deploy/local-cluster`` without ``--hosts``)
cannot each have a VXLAN device per VNI (the kernel takes one per VNI and UDP port in a
namespace) and need none: every container of the network is in this namespace's reach.
They share the bridge ``dys-<hash of the network's ID>`` instead (the ID, unique to the
cluster, not the VNI: two clusters on one machine must not meet on one bridge), with no
VXLAN port and no remote entries:
each agent plugs its own containers' veths into it (making it when it is missing), so
they meet at L2 as on one host of the VXLAN case. A bridge goes only once no container
of any agent is plugged into it.

Every call is netlink through pyroute2 (no ``ip`` output parsed); pyroute2 is blocking,
so the async functions run it in a thread. The ``netlink`` factory is the node's own
namespace in the agent, a "host" namespace (``pyroute2.NetNS``) in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NUD_NOARP, NUD_PERMANENT

from dockyard.agent.network.netns import netns_path

__all__ = [
    "VXLAN_OVERHEAD",
    "VXLAN_PORT",
    "OverlayDevices",
    "OverlayNetwork",
    "Peer",
    "bridge_name",
    "shared_bridge_name",
    "vxlan_name",
]

log = structlog.get_logger(__name__)

VXLAN_PORT = 4789  # IANA's, as Docker and the kernel's default
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
_ESRCH, _ENOENT, _EEXIST, _ENODEV = 3, 2, 17, 19
_MAIN_TABLE = 254
NTF_SELF = 0x02

T = TypeVar("T")
Netlink = Callable[[], Any]
"""Opens a pyroute2 IPRoute-like socket (closed by the caller)."""


@dataclass(frozen=True)
class OverlayNetwork:
    """What a node needs of a cluster network."""

    network_id: str
    vni: int
    subnet: str
    internal: bool = False
    ingress: bool = False  # the routing mesh's: neither a way out nor a way in for names


@dataclass(frozen=True)
class Peer:
    """A container on the network on another host: its address, MAC and host."""

    address: str
    mac: str
    host: str


def bridge_name(vni: int) -> str:
    return f"dyb-{vni:06x}"


def shared_bridge_name(network_id: str) -> str:
    """A shared host's bridge of the network: named by its cluster-unique ID, not its
    VNI, so two clusters' agents on one machine (each counting VNIs from 4096) never
    meet on one bridge."""
    return "dys-" + hashlib.sha256(network_id.encode()).hexdigest()[:11]


def vxlan_name(vni: int) -> str:
    return f"dyv-{vni:06x}"


def veth_name(netns: str, ifname: str) -> str:
    """The host end of a container's veth: stable for (namespace, interface), 15 chars."""
    return "dyo" + hashlib.sha256(f"{netns}/{ifname}".encode()).hexdigest()[:12]


def mac_for(address: str) -> str:
    """A container's MAC from its address, as Docker derives it (02:42 + the IPv4
    bytes): stable, so a peer's entry never needs the MAC read back from the host."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


class OverlayDevices:
    """Args:
    underlay: This node's address other hosts reach it at (the VXLAN source).
    mtu: The underlay's MTU; the overlay's is VXLAN_OVERHEAD less.
    netlink: Opens a netlink socket in the node's namespace.
    shared: Agents share this namespace: one bridge per network for all of them, no
        VXLAN (see the module's docstring).
    """

    def __init__(
        self, underlay: str, mtu: int = 1500, netlink: Netlink = IPRoute, shared: bool = False
    ) -> None:
        self._underlay = str(ipaddress.IPv4Address(underlay))
        self._mtu = mtu - VXLAN_OVERHEAD
        self._netlink = netlink
        self.shared = shared

    @property
    def netlink(self) -> Netlink:
        """Opens a netlink socket in the node's namespace."""
        return self._netlink

    async def ensure(self, network: OverlayNetwork) -> None:
        """The network's bridge and VXLAN device exist and are up."""
        await asyncio.to_thread(_netlink_errors, self._ensure, network)

    async def attach(self, network: OverlayNetwork, netns: str, ifname: str, address: str) -> str:
        """A veth from the network's bridge into the named namespace ``netns`` as
        ``ifname`` with ``address`` (no prefix: the network's); returns its MAC."""
        return await asyncio.to_thread(
            _netlink_errors, self._attach, network, netns, ifname, address
        )

    async def detach(self, netns: str, ifname: str) -> None:
        """Delete the container's veth (its namespace's end goes with it)."""
        await asyncio.to_thread(_netlink_errors, self._detach, netns, ifname)

    async def isolate(self, netns: str) -> int:
        """No route out of the named namespace ``netns``: its default routes deleted (a
        container on ``--internal`` networks only); the number deleted."""
        return await asyncio.to_thread(_netlink_errors, self._isolate, netns)

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None:
        """The network's remote entries are exactly ``peers`` (stale ones deleted)."""
        await asyncio.to_thread(_netlink_errors, self._set_peers, network, list(peers))

    async def remove(self, network: OverlayNetwork) -> None:
        """Delete the network's VXLAN device and bridge (ports and entries go with them)."""
        await asyncio.to_thread(_netlink_errors, self._remove, network)

    async def remove_all(self) -> list[int]:
        """Delete every overlay network of this node (the agent's stop); their VNIs."""
        return await asyncio.to_thread(_netlink_errors, self._remove_all)

    # -- the netlink side (threads) -----------------------------------------------

    def _ensure(self, network: OverlayNetwork) -> None:
        with self._netlink() as ipr:
            bridge = self._bridge(ipr, network)
            if self.shared:
                return
            vxlan = _index(ipr, vxlan_name(network.vni))
            if vxlan is None:
                _create(
                    ipr,
                    ifname=vxlan_name(network.vni),
                    kind="vxlan",
                    vxlan_id=network.vni,
                    vxlan_local=self._underlay,
                    vxlan_port=VXLAN_PORT,
                    vxlan_learning=0,
                    vxlan_proxy=1,
                    mtu=self._mtu,
                )
                vxlan = _index(ipr, vxlan_name(network.vni))
            ipr.link("set", index=vxlan, master=bridge)
            ipr.link("set", index=vxlan, state="up")
            ipr.link("set", index=bridge, state="up")

    def bridge_of(self, network: OverlayNetwork) -> str:
        """The network's bridge on this node."""
        return shared_bridge_name(network.network_id) if self.shared else bridge_name(network.vni)

    def _bridge(self, ipr: Any, network: OverlayNetwork) -> int:
        """The network's bridge, made (and up) when missing."""
        name = self.bridge_of(network)
        bridge = _index(ipr, name)
        if bridge is None:
            _create(ipr, ifname=name, kind="bridge", mtu=self._mtu)
            bridge = _index(ipr, name)
            if bridge is None:
                raise RuntimeError(f"overlay network {network.network_id}: no bridge made")
            log.info("overlay.bridge_created", vni=network.vni, network=network.network_id)
        ipr.link("set", index=bridge, state="up")
        return bridge

    def _attach(self, network: OverlayNetwork, netns: str, ifname: str, address: str) -> str:
        host_end = veth_name(netns, ifname)
        subnet = ipaddress.IPv4Network(network.subnet)
        mac = mac_for(address)
        with self._netlink() as ipr:
            # Shared: another agent may have removed the bridge it found unused meanwhile.
            bridge = (
                self._bridge(ipr, network) if self.shared else _index(ipr, bridge_name(network.vni))
            )
            if bridge is None:
                raise RuntimeError(f"overlay network {network.network_id} is not set up here")
            if _index(ipr, host_end) is None:
                _create(
                    ipr,
                    ifname=host_end,
                    kind="veth",
                    mtu=self._mtu,
                    peer={"ifname": ifname, "net_ns_fd": netns, "mtu": self._mtu},
                )
            index = _index(ipr, host_end)
            ipr.link("set", index=index, master=bridge, state="up")
        with _entered(netns), IPRoute() as inside:
            index = _index(inside, ifname)
            if index is None:
                raise RuntimeError(f"{ifname} did not reach namespace {netns}")
            inside.link("set", index=index, address=mac)
            try:
                inside.addr("add", index=index, address=address, prefixlen=subnet.prefixlen)
            except NetlinkError as exc:
                if exc.code != _EEXIST:
                    raise
            inside.link("set", index=index, state="up")
        log.info("overlay.attached", network=network.network_id, netns=netns, address=address)
        return mac

    def _detach(self, netns: str, ifname: str) -> None:
        with self._netlink() as ipr:
            index = _index(ipr, veth_name(netns, ifname))
            if index is not None:
                _ignore_gone(ipr.link, "del", index=index)

    def _isolate(self, netns: str) -> int:
        # Only the default routes go: the bridge's connected route stays, so the node's
        # DNS server (the bridge's gateway) still answers the container.
        deleted = 0
        with _entered(netns), IPRoute() as inside:
            for route in inside.get_routes(family=socket.AF_INET, table=_MAIN_TABLE):
                if route["dst_len"] != 0:
                    continue
                try:
                    inside.route(
                        "del",
                        dst="0.0.0.0/0",
                        table=_MAIN_TABLE,
                        gateway=route.get_attr("RTA_GATEWAY"),
                        oif=route.get_attr("RTA_OIF"),
                    )
                    deleted += 1
                except NetlinkError as exc:
                    if exc.code != _ESRCH:
                        raise
        if deleted:
            log.info("overlay.isolated", netns=netns, routes=deleted)
        return deleted

    def _set_peers(self, network: OverlayNetwork, peers: list[Peer]) -> None:
        if self.shared:  # no VXLAN: the other agents' containers are on the same bridge
            return
        wanted = {p.address: p for p in peers if p.host != self._underlay}
        with self._netlink() as ipr:
            vxlan = _index(ipr, vxlan_name(network.vni))
            if vxlan is None:
                raise RuntimeError(f"overlay network {network.network_id} is not set up here")
            have_neigh = {
                n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR")
                for n in ipr.get_neighbours(ifindex=vxlan)
                if n["state"] & NUD_PERMANENT
            }
            have_fdb = {
                n.get_attr("NDA_LLADDR"): n.get_attr("NDA_DST")
                for n in ipr.fdb("dump", ifindex=vxlan)
                if n["ifindex"] == vxlan and n.get_attr("NDA_DST")
            }
            keep_macs = {p.mac for p in wanted.values()}
            for address, mac in have_neigh.items():
                if address not in wanted or wanted[address].mac != mac:
                    _ignore_gone(ipr.neigh, "del", dst=address, ifindex=vxlan)
            for mac, host in have_fdb.items():
                if mac not in keep_macs:
                    _ignore_gone(ipr.fdb, "del", ifindex=vxlan, lladdr=mac, dst=host)
            for peer in wanted.values():
                if have_fdb.get(peer.mac) not in (None, peer.host):
                    _ignore_gone(
                        ipr.fdb, "del", ifindex=vxlan, lladdr=peer.mac, dst=have_fdb[peer.mac]
                    )
                if have_fdb.get(peer.mac) != peer.host:
                    ipr.fdb(  # flags and state spelled out: pyroute2 defaults them only for add
                        "replace",
                        ifindex=vxlan,
                        lladdr=peer.mac,
                        dst=peer.host,
                        flags=NTF_SELF,
                        state=NUD_PERMANENT | NUD_NOARP,
                    )
                if have_neigh.get(peer.address) != peer.mac:
                    ipr.neigh(
                        "replace",
                        dst=peer.address,
                        lladdr=peer.mac,
                        ifindex=vxlan,
                        state=NUD_PERMANENT,
                    )
        log.debug("overlay.peers_set", network=network.network_id, peers=len(wanted))

    def _remove(self, network: OverlayNetwork) -> None:
        vni = network.vni
        with self._netlink() as ipr:
            if self.shared and _has_ports(ipr, self.bridge_of(network)):
                log.info("overlay.kept", vni=vni, reason="another agent's containers use it")
                return
            names = (
                [self.bridge_of(network)] if self.shared else [vxlan_name(vni), bridge_name(vni)]
            )
            for name in names:
                index = _index(ipr, name)
                if index is not None:
                    _ignore_gone(ipr.link, "del", index=index)
        log.info("overlay.removed", vni=vni)

    def _remove_all(self) -> list[int]:
        with self._netlink() as ipr:
            names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        vnis = sorted(int(n[4:], 16) for n in names if n.startswith("dyb-"))
        for vni in vnis:
            self._remove(OverlayNetwork("", vni, "0.0.0.0/32"))
        return vnis


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _entered(netns: str) -> Iterator[None]:
    """This thread inside the named namespace ``netns``, and back after.

    ``setns`` moves only the calling thread, and a netlink socket stays in the namespace
    it was opened in. pyroute2's own ``NetNS`` forks a helper process instead, which a
    process with gRPC threads must not do (gRPC's fork handlers are skipped and its
    channels break: the agent's session ended at the first container).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns_path(netns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def _netlink_errors(action: Callable[..., T], *args: Any) -> T:
    """``action(*args)`` with a refused netlink request as RuntimeError naming it."""
    try:
        return action(*args)
    except NetlinkError as exc:
        raise RuntimeError(f"netlink ({action.__name__.lstrip('_')}): {exc}") from exc


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _has_ports(ipr: Any, bridge: str) -> bool:
    index = _index(ipr, bridge)
    return index is not None and any(
        link.get_attr("IFLA_MASTER") == index for link in ipr.get_links()
    )


def _create(ipr: Any, **attributes: Any) -> None:
    try:
        ipr.link("add", **attributes)
    except NetlinkError as exc:
        if exc.code != _EEXIST:  # made meanwhile (an agent restarted mid-setup)
            raise


def _ignore_gone(action: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``action(*args, **kwargs)``; an entry or device already gone is no error."""
    try:
        action(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in (_ENOENT, _ENODEV):
            raise
