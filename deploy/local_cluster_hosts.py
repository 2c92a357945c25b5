"""`deploy/local-cluster up --hosts N`: each agent on a "host" of its own, a network
namespace with its own address on a LAN (a bridge of this machine), as tests/network's
multi-host tests do. The controllers, the etcd members and the registry stay on this
machine, reached at the LAN's first address. Standard library only.

The LAN is the bridge `<prefix>lan` with the first address of `--lan` (10.209.0.0/24);
host N is the namespace `<prefix>host-N`, its `eth0` at the LAN's (10 + N)th address,
its default route via this machine. Deleting a namespace takes its bridges, routes,
iptables rules and veth with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["host_names", "in_host", "make_hosts", "remove_hosts", "unavailable"]

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


def make_hosts(prefix: str, gateway: str, prefixlen: int, addresses: list[str]) -> None:
    """The LAN bridge and one namespace per address on it; what exists is kept."""
    lan = f"{prefix}lan"
    if not Path(f"/sys/class/net/{lan}").exists():
        _ip("link", "add", lan, "type", "bridge")
        _ip("addr", "add", f"{gateway}/{prefixlen}", "dev", lan)
        print(f"made the LAN: bridge {lan}, this machine at {gateway}")
    _ip("link", "set", lan, "up")
    for (netns, veth), address in zip(host_names(prefix, len(addresses)), addresses, strict=True):
        if (NETNS_DIR / netns).exists():
            continue
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", lan, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
        for link in ("lo", "eth0"):
            _ip("-n", netns, "link", "set", link, "up")
        _ip("-n", netns, "route", "add", "default", "via", gateway)
        print(f"made host {netns} at {address}")


def in_host(netns: str, args: list[str]) -> list[str]:
    """`args` run in the host's network namespace. nsenter, not `ip netns exec`: that
    mounts the namespace's sysfs over /sys, which hides the cgroups runc needs."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *args]


def remove_hosts(prefix: str) -> None:
    """Every host namespace of the prefix (with what is in it: bridges, routes, iptables
    rules, the veth) and the LAN bridge."""
    found = sorted(NETNS_DIR.glob(f"{prefix}host-*")) if NETNS_DIR.is_dir() else []
    for netns in found:
        _ip("netns", "delete", netns.name, check=False)
        print(f"removed host {netns.name}")
    lan = f"{prefix}lan"
    if Path(f"/sys/class/net/{lan}").exists():
        _ip("link", "delete", lan, check=False)
        print(f"removed the LAN bridge {lan}")
