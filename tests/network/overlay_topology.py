"""Two "hosts" on two L2 segments joined by a router, each a network namespace, and
"containers" (namespaces) on them: the overlay's tests and benchmark need hosts that
reach each other only through a router, so container traffic must be encapsulated.

    segment 1 (10.241.1.0/24)            segment 2 (10.241.2.0/24)
    host A eth0 .10 ── r1 .1 [router] r2 .1 ── eth0 .10 host B

Everything is named with a per-run prefix and deleted at the end (deleting a namespace
takes its veths, bridges, VXLAN devices and nftables tables with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

__all__ = ["Topology", "unavailable"]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"dy{uuid.uuid4().hex[:5]}")
    made: list[str] = field(default_factory=list)

    @property
    def router(self) -> str:
        return f"{self.prefix}-rt"

    def host(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def underlay(self, name: str) -> str:
        return {"a": "10.241.1.10", "b": "10.241.2.10"}[name]

    def netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def up(self) -> Topology:
        router = self.netns(self.router)
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for number, name in ((1, "a"), (2, "b")):
            host = self.netns(self.host(name))
            sh(
                "ip", "-n", router, "link", "add", f"r{number}", "type", "veth",
                "peer", "name", "eth0", "netns", host,
            )  # fmt: skip
            sh("ip", "-n", router, "addr", "add", f"10.241.{number}.1/24", "dev", f"r{number}")
            sh("ip", "-n", router, "link", "set", f"r{number}", "up")
            sh("ip", "-n", host, "addr", "add", f"{self.underlay(name)}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "route", "add", "default", "via", f"10.241.{number}.1")
        return self

    def container(self, name: str) -> str:
        return self.netns(f"{self.prefix}-c-{name}")

    def run(self, netns: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *args, check=check)

    def reaches(self, netns: str, address: str) -> bool:
        return self.run(netns, "busybox", "ping", "-c", "1", "-W", "1", address).returncode == 0

    def down(self) -> None:
        for name in reversed(self.made):
            sh("ip", "netns", "delete", name, check=False)
        self.made.clear()
