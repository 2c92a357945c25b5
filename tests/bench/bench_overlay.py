"""Overlay network benchmark: the data path the agent sets up, measured on this machine.

    python tests/bench/bench_overlay.py [--seconds 5] [--connects 300]

Run as root, from the repository with its virtualenv. Builds the overlay tests'
topology (tests/network/overlay_topology.py: two "hosts" on two L2 segments behind a
router namespace), with agent/network/overlay.py and agent/network/vip.py doing the
overlay's part, and measures:

  throughput  iperf3 (TCP, one stream) container -> container:
              over VXLAN between the hosts, vs two containers on one host's bridge
              (same host), vs the cluster network's host-gw way (the container
              subnets routed through the router, no encapsulation: the baseline)
  connect     TCP connect+close to a VIP (nftables DNAT, 2 backends on 2 hosts) vs
              to one backend's own address, through VXLAN both
  follow      how long after a backend leaves the VIP map no new connection reaches it
              (the ruleset replaced in one nft transaction; measured as the apply time
              of apply_vips, then checked with 20 connections)

Every ratio is against the baseline measured in the same run. Everything it makes is
deleted at the end (the namespaces take their devices and rules with them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2 import NetNS

from dockyard.agent.network.overlay import (
    OverlayDevices,
    OverlayNetwork,
    Peer,
    mac_for,
)
from dockyard.agent.network.vip import VirtualIP, apply_vips
from tests.network.overlay_topology import Topology, sh, unavailable

NET = OverlayNetwork("bench", 6001, "10.243.1.0/24")
VIP = "10.243.1.250"


def iperf(topology: Topology, server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client_ns to address (a server in server_ns)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        done = topology.run(
            client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J", check=True
        )
        report = json.loads(done.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.wait(timeout=10)


def connect_times(netns: str, address: str, count: int) -> list[float]:
    """Seconds per TCP connect+close, measured inside netns (one Python process)."""
    code = (
        "import socket,time,json,sys\n"
        f"out=[]\nfor _ in range({count}):\n"
        "  s=socket.socket();t=time.perf_counter()\n"
        f"  s.connect(('{address}',5201));out.append(time.perf_counter()-t);s.close()\n"
        "print(json.dumps(out))\n"
    )
    done = sh("ip", "netns", "exec", netns, sys.executable, "-c", code)
    return [float(x) for x in json.loads(done.stdout)]


def listener(netns: str, address: str) -> subprocess.Popen[bytes]:
    """A TCP listener on address:5201 that accepts and closes forever."""
    code = (
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(('{address}',5201));s.listen(512)\n"
        "while True:\n"
        f"  c,_=s.accept();c.sendall(b'{address}');c.close()\n"
    )
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code])


async def build(topology: Topology) -> dict[str, str]:
    devices = {
        name: OverlayDevices(topology.underlay(name), netlink=partial(NetNS, topology.host(name)))
        for name in ("a", "b")
    }
    for node in devices.values():
        await node.ensure(NET)
    spots = {"c1": ("a", "10.243.1.2"), "c2": ("b", "10.243.1.3"), "c3": ("a", "10.243.1.4")}
    names = {}
    for name, (host, address) in spots.items():
        names[name] = topology.container(name)
        await devices[host].attach(NET, names[name], "eth1", address)
    peers = [Peer(a, mac_for(a), topology.underlay(h)) for h, a in spots.values()]
    for node in devices.values():
        await node.set_peers(NET, peers)
    # host-gw: a container on each host behind a routed veth, subnets routed by the router
    for host, number in (("a", 1), ("b", 2)):
        ns = topology.container(f"gw{host}")
        names[f"gw{host}"] = ns
        hostns = topology.host(host)
        sh(
            "ip",
            "-n",
            hostns,
            "link",
            "add",
            f"gw{host}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", hostns, "addr", "add", f"10.244.{number}.1/24", "dev", f"gw{host}")
        sh("ip", "-n", hostns, "link", "set", f"gw{host}", "up")
        sh("ip", "netns", "exec", hostns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", ns, "addr", "add", f"10.244.{number}.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"10.244.{number}.1")
        sh(
            "ip",
            "-n",
            topology.router,
            "route",
            "add",
            f"10.244.{number}.0/24",
            "via",
            topology.underlay(host),
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=300)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    topology = Topology()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        topology.up()
        names = asyncio.run(build(topology))
        print(f"throughput, iperf3 TCP one stream, {args.seconds} s each (Gbit/s)")
        rows = {
            "VXLAN overlay, host A -> host B": iperf(
                topology, names["c2"], names["c1"], "10.243.1.3", args.seconds
            ),
            "overlay bridge, same host": iperf(
                topology, names["c3"], names["c1"], "10.243.1.4", args.seconds
            ),
            "host-gw routes, host A -> host B (baseline)": iperf(
                topology, names["gwb"], names["gwa"], "10.244.2.2", args.seconds
            ),
        }
        base = rows["host-gw routes, host A -> host B (baseline)"]
        for label, value in rows.items():
            print(f"  {label:48} {value:7.2f}  {value / base:5.2f}x")

        servers += [listener(names["c2"], "10.243.1.3"), listener(names["c3"], "10.243.1.4")]
        time.sleep(0.5)
        asyncio.run(apply_vips(names["c1"], [VirtualIP(VIP, ("10.243.1.3", "10.243.1.4"))]))
        direct = connect_times(names["c1"], "10.243.1.3", args.connects)
        vip = connect_times(names["c1"], VIP, args.connects)
        print(f"connect+close, {args.connects} each (median / p90, ms)")
        for label, values in (("direct to a task (baseline)", direct), ("to the VIP", vip)):
            cuts = statistics.quantiles(values, n=10)
            ratio = statistics.median(values) / statistics.median(direct)
            median = statistics.median(values) * 1e3
            print(f"  {label:48} {median:6.3f} / {cuts[8] * 1e3:6.3f}  {ratio:5.2f}x")

        applies = []
        for _ in range(20):
            started = time.perf_counter()
            asyncio.run(apply_vips(names["c1"], [VirtualIP(VIP, ("10.243.1.4",))]))
            applies.append(time.perf_counter() - started)
            asyncio.run(apply_vips(names["c1"], [VirtualIP(VIP, ("10.243.1.3", "10.243.1.4"))]))
        asyncio.run(apply_vips(names["c1"], [VirtualIP(VIP, ("10.243.1.4",))]))
        check = (
            "import socket\nfor _ in range(20):\n  s=socket.socket()\n"
            f"  s.connect(('{VIP}',5201));print(s.recv(64).decode());s.close()\n"
        )
        peers = set(
            sh("ip", "netns", "exec", names["c1"], sys.executable, "-c", check).stdout.split()
        )
        print("a backend leaving the VIP (apply_vips, one nft transaction), 20 times")
        print(
            f"  median {statistics.median(applies) * 1e3:.1f} ms, max {max(applies) * 1e3:.1f} ms; "
            f"20 new connections after it reached {sorted(peers)}"
        )
    finally:
        for server in servers:
            server.kill()
            server.wait()
        topology.down()


if __name__ == "__main__":
    main()
