"""`deploy/local-cluster up --hosts N`: each agent on a "host" of its own, a network
namespace with its own address on a LAN (a bridge of this machine), as tests/network's
multi-host tests do. The controllers, the etcd members and the registry stay on this
machine, reached at the LAN's first address. Standard library only.

The LAN is the bridge `<prefix>lan` with the first address of `--lan` (10.209.0.0/24);
host N is the namespace `<prefix>host-N`, its `eth0` at the LAN's (10 + N)th address,
its default route via this machine. Deleting a namespace takes its bridges, routes,
iptables rules and veth with it.

With `--segments S` the LAN is cut into S equal L2 segments: segment 1 is the bridge
`<prefix>lan` (this machine on it), segment K the bridge `<prefix>lanK` (this machine
not on it), and the namespace `<prefix>router` joins them, at the last address of each
(its `ethK` on segment K, whose end on this machine is `<prefix>rK`). Hosts on segment 1
route the other segments through it, the hosts of the others everything; this machine
routes the other segments through it (routes that go with the LAN bridge). Hosts on
different segments share no L2: their containers need the overlay's VXLAN.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Segment",
    "host_names",
    "in_host",
    "make_hosts",
    "remove_hosts",
    "router_netns",
    "unavailable",
]

NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str:
    """Why separate hosts cannot run here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = f"dyprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return ""


def host_names(prefix: str, nodes: int) -> list[tuple[str, str]]:
    """(namespace, this machine's veth end) of each host."""
    return [(f"{prefix}host-{n}", f"{prefix}h{n}") for n in range(1, nodes + 1)]


@dataclass(frozen=True)
class Segment:
    """One L2 segment of the LAN: its network and its bridge on this machine."""

    network: ipaddress.IPv4Network
    bridge: str

    @property
    def router(self) -> str:
        """The router namespace's address here: the segment's last host address."""
        return str(self.network.broadcast_address - 1)


def router_netns(prefix: str) -> str:
    return f"{prefix}router"


def segments_of(prefix: str, networks: list[ipaddress.IPv4Network]) -> list[Segment]:
    return [
        Segment(net, f"{prefix}lan" if k == 1 else f"{prefix}lan{k}")
        for k, net in enumerate(networks, start=1)
    ]


def _bridge(name: str, address: str = "") -> None:
    if not Path(f"/sys/class/net/{name}").exists():
        _ip("link", "add", name, "type", "bridge")
        if address:
            _ip("addr", "add", address, "dev", name)
        print(
            f"made the LAN segment: bridge {name}"
            + (f", this machine at {address}" if address else "")
        )
    _ip("link", "set", name, "up")


def _make_router(prefix: str, segments: list[Segment]) -> None:
    """The router namespace, a leg on each segment, and this machine's routes to the
    segments it is not on (via the router's address on segment 1)."""
    netns = router_netns(prefix)
    if (NETNS_DIR / netns).exists():
        return
    _ip("netns", "add", netns)
    _ip("-n", netns, "link", "set", "lo", "up")
    subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        check=True, capture_output=True,
    )  # fmt: skip
    for k, segment in enumerate(segments, start=1):
        leg = f"{prefix}r{k}"
        _ip("link", "add", leg, "type", "veth", "peer", "name", f"eth{k}", "netns", netns)
        _ip("link", "set", leg, "master", segment.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{segment.router}/{segment.network.prefixlen}",
            "dev", f"eth{k}")  # fmt: skip
        _ip("-n", netns, "link", "set", f"eth{k}", "up")
    for segment in segments[1:]:
        _ip("route", "replace", str(segment.network), "via", segments[0].router,
            "dev", segments[0].bridge)  # fmt: skip
    print(f"made the router {netns} joining {len(segments)} segments")


def make_hosts(
    prefix: str,
    gateway: str,
    networks: list[ipaddress.IPv4Network],
    addresses: list[tuple[str, int]],
) -> None:
    """The LAN's segment bridges (one without --segments), the router joining them, and
    one namespace per (address, segment number); what exists is kept."""
    segments = segments_of(prefix, networks)
    for k, segment in enumerate(segments, start=1):
        _bridge(segment.bridge, f"{gateway}/{segment.network.prefixlen}" if k == 1 else "")
    if len(segments) > 1:
        _make_router(prefix, segments)
    hosts = host_names(prefix, len(addresses))
    for (netns, veth), (address, number) in zip(hosts, addresses, strict=True):
        if (NETNS_DIR / netns).exists():
            continue
        segment = segments[number - 1]
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", segment.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{segment.network.prefixlen}", "dev", "eth0")
        for link in ("lo", "eth0"):
            _ip("-n", netns, "link", "set", link, "up")
        if number == 1:
            _ip("-n", netns, "route", "add", "default", "via", gateway)
            for other in segments[1:]:
                _ip("-n", netns, "route", "add", str(other.network), "via", segment.router)
        else:
            _ip("-n", netns, "route", "add", "default", "via", segment.router)
        print(f"made host {netns} at {address} (segment {number})")


def in_host(netns: str, args: list[str]) -> list[str]:
    """`args` run in the host's network namespace. nsenter, not `ip netns exec`: that
    mounts the namespace's sysfs over /sys, which hides the cgroups runc needs."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *args]


def remove_hosts(prefix: str) -> None:
    """Every host namespace of the prefix (with what is in it: bridges, routes, iptables
    rules, the veth), the router namespace and the LAN's bridges."""
    found = sorted(NETNS_DIR.glob(f"{prefix}host-*")) if NETNS_DIR.is_dir() else []
    for netns in found:
        _ip("netns", "delete", netns.name, check=False)
        print(f"removed host {netns.name}")
    router = router_netns(prefix)
    if (NETNS_DIR / router).exists():
        _ip("netns", "delete", router, check=False)
        print(f"removed the router {router}")
    for number in range(4, 0, -1):  # the segments' bridges (their routes go with them)
        lan = f"{prefix}lan" if number == 1 else f"{prefix}lan{number}"
        if Path(f"/sys/class/net/{lan}").exists():
            _ip("link", "delete", lan, check=False)
            print(f"removed the LAN bridge {lan}")
