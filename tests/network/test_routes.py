"""``PeerRoutes`` in real network namespaces: routes, iptables chains, skipped peers, clear,
and packets between two namespace "hosts" through the routes.

Nothing is mocked: each test makes its own namespaces (``dyrt-<hex>``), runs the code
inside one with ``ip netns exec`` (a Python snippet printing JSON), and reads the result
back with ``ip -n NS route`` and ``iptables-save``. Deleting the namespaces at teardown
takes their routes and iptables rules with them, also when a test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.routes import CHAIN, PeerRoute, PeerRoutes

pytestmark = [
    pytest.mark.runc,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(
            shutil.which(tool) for tool in ("ip", "iptables", "iptables-save", "iptables-restore")
        ),
        reason="needs root, iproute2 and iptables",
    ),
]

LOCAL = "10.213.50.0/24"
COMMENT = '-m comment --comment "dockyard peer route"'

RUNNER = """
import asyncio, dataclasses, json, sys
import structlog
structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from dockyard.agent.network.routes import PeerRoute, PeerRoutes

async def main():
    routes, results = PeerRoutes(), []
    for op in json.loads(sys.argv[1]):
        if op["op"] == "clear":
            await routes.clear()
            results.append(None)
        else:
            done = await routes.sync(op["local"], [PeerRoute(**p) for p in op["peers"]])
            results.append([dataclasses.asdict(p) for p in done])
    print(json.dumps(results))

asyncio.run(main())
"""


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def peer(node_id: str, subnet: str, via: str) -> dict[str, str]:
    return {"node_id": node_id, "subnet": subnet, "via": via}


@dataclass
class Host:
    """A network namespace standing for a host."""

    name: str
    logs: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per run of :meth:`ops`, what PeerRoutes logged."""

    def ip(self, *args: str, check: bool = True) -> str:
        return run("ip", "-n", self.name, *args, check=check).stdout

    def exec(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *args, check=check, timeout=timeout)

    def link(self, name: str, cidr: str) -> None:
        """A veth pair inside the namespace, both ends up, ``cidr`` on ``name``: an
        interface with a carrier (this kernel may have no ``dummy``)."""
        self.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        self.ip("addr", "add", cidr, "dev", name)
        self.ip("link", "set", f"{name}p", "up")
        self.ip("link", "set", name, "up")

    def forward(self) -> None:
        self.exec(sys.executable, "-c", "open('/proc/sys/net/ipv4/ip_forward', 'w').write('1')")

    def ops(self, *ops: dict[str, Any]) -> list[Any]:
        """Run sync/clear in the namespace, in one process; their results."""
        result = self.exec(sys.executable, "-c", RUNNER, json.dumps(list(ops)), check=False)
        assert result.returncode == 0, f"PeerRoutes failed: {result.stderr}"
        self.logs.append(
            [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        )
        return list(json.loads(result.stdout))

    def sync(self, peers: list[dict[str, str]], local: str = LOCAL) -> list[dict[str, str]]:
        return list(self.ops({"op": "sync", "local": local, "peers": peers})[0])

    def clear(self) -> None:
        self.ops({"op": "clear"})

    def our_routes(self) -> list[str]:
        return sorted(
            " ".join(line.split())
            for line in self.ip("-4", "route", "show", "proto", "77").splitlines()
            if line.strip()
        )

    def routes(self) -> list[str]:
        return sorted(
            " ".join(line.split())
            for line in self.ip("-4", "route", "show", "table", "main").splitlines()
            if line.strip()
        )

    def chains(self, table: str) -> dict[str, list[str]]:
        """``{chain: [rule, ...]}`` of ``table`` (``:CHAIN`` declarations give [])."""
        saved = self.exec("iptables-save", "-t", table).stdout
        chains: dict[str, list[str]] = {}
        for line in saved.splitlines():
            if line.startswith(":"):
                chains.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A "):
                chains.setdefault(line.split()[1], []).append(line)
        return chains

    def iptables(self, *args: str) -> None:
        self.exec("iptables", "-w", *args)


@pytest.fixture
def hosts() -> Iterator[Callable[[str], Host]]:
    """Makes namespaces ``dyrt-<hex>-<suffix>``; all are deleted at teardown."""
    prefix = f"dyrt-{uuid.uuid4().hex[:6]}"
    made: list[Host] = []

    def make(suffix: str = "a") -> Host:
        host = Host(f"{prefix}-{suffix}")
        run("ip", "netns", "add", host.name)
        made.append(host)
        host.ip("link", "set", "lo", "up")
        return host

    try:
        yield make
    finally:
        for host in made:
            run("ip", "netns", "delete", host.name, check=False)
        left = [h.name for h in made if os.path.lexists(f"/run/netns/{h.name}")]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def host(hosts: Callable[[str], Host]) -> Host:
    """A host on 192.168.77.1/24 whose bridge has 10.213.50.1/24, FORWARD policy DROP
    (as with Docker), and the bridge plugin's MASQUERADE in POSTROUTING."""
    made = hosts("a")
    made.link("up0", "192.168.77.1/24")
    made.link("br0", "10.213.50.1/24")
    made.iptables("-P", "FORWARD", "DROP")
    made.iptables("-A", "FORWARD", "-i", "up0", "-j", "DROP")
    made.iptables(
        "-t", "nat", "-A", "POSTROUTING", "-s", LOCAL, "!", "-d", LOCAL, "-j", "MASQUERADE"
    )
    return made


def peer_rules(*subnets: str) -> tuple[list[str], list[str]]:
    """The wanted (filter, nat) rules of our chain for peers on ``subnets``."""
    filter_rules, nat_rules = [], []
    for subnet in subnets:
        filter_rules += [
            f"-A {CHAIN} -s {subnet} -d {LOCAL} {COMMENT} -j ACCEPT",
            f"-A {CHAIN} -s {LOCAL} -d {subnet} {COMMENT} -j ACCEPT",
        ]
        nat_rules.append(f"-A {CHAIN} -s {LOCAL} -d {subnet} {COMMENT} -j ACCEPT")
    return filter_rules, nat_rules


def assert_rules(host: Host, *subnets: str) -> None:
    """Our chains hold exactly the rules for ``subnets``, jumped to once, first."""
    filter_rules, nat_rules = peer_rules(*subnets)
    jump = f"{COMMENT} -j {CHAIN}"
    for table, builtin, rules in (
        ("filter", "FORWARD", filter_rules),
        ("nat", "POSTROUTING", nat_rules),
    ):
        chains = host.chains(table)
        assert chains.get(CHAIN) == rules, (table, chains)
        listed = chains[builtin]
        assert listed[0] == f"-A {builtin} {jump}", (table, listed)
        assert sum(CHAIN in line for line in listed) == 1, (table, listed)


def assert_no_rules(host: Host) -> None:
    for table in ("filter", "nat"):
        saved = host.exec("iptables-save", "-t", table).stdout
        assert CHAIN not in saved, saved


# ----------------------------------------------------------------------- tests


def test_two_peers_routed_with_rules_once(host: Host) -> None:
    host.ip("route", "add", "10.99.0.0/16", "via", "192.168.77.9", "proto", "static")
    before = [r for r in host.routes() if "proto 77" not in r]
    peers = [
        peer("n2", "10.213.51.0/24", "192.168.77.2"),
        peer("n3", "10.213.52.0/24", "192.168.77.3"),
    ]
    sync = {"op": "sync", "local": LOCAL, "peers": peers}

    # twice in one process, then once more in another: nothing doubles
    assert host.ops(sync, sync) == [peers, peers]
    assert host.sync(peers) == peers
    assert host.our_routes() == [
        "10.213.51.0/24 via 192.168.77.2 dev up0",
        "10.213.52.0/24 via 192.168.77.3 dev up0",
    ]
    assert_rules(host, "10.213.51.0/24", "10.213.52.0/24")
    # the rules that were there stay, after our jump
    assert host.chains("filter")["FORWARD"][1:] == ["-A FORWARD -i up0 -j DROP"]
    assert host.chains("nat")["POSTROUTING"][1:] == [
        f"-A POSTROUTING -s {LOCAL} ! -d {LOCAL} -j MASQUERADE"
    ]
    # the host's own routes are untouched
    assert [r for r in host.routes() if "proto 77" not in r] == before
    events = [[e["event"] for e in log] for log in host.logs]
    assert events[0].count("peer.route_set") == 2 and "peer.route_set" not in events[1]
    assert events[1] == []  # nothing to do: nothing rewritten, nothing logged


def test_sync_follows_peers_that_leave_or_move(host: Host) -> None:
    n2, n3 = (
        peer("n2", "10.213.51.0/24", "192.168.77.2"),
        peer("n3", "10.213.52.0/24", "192.168.77.3"),
    )
    assert host.sync([n2, n3]) == [n2, n3]
    # n3 left: its route and rules go
    assert host.sync([n2]) == [n2]
    assert host.our_routes() == ["10.213.51.0/24 via 192.168.77.2 dev up0"]
    assert_rules(host, "10.213.51.0/24")
    # n2 got another address: the route follows
    moved = peer("n2", "10.213.51.0/24", "192.168.77.4")
    assert host.sync([moved]) == [moved]
    assert host.our_routes() == ["10.213.51.0/24 via 192.168.77.4 dev up0"]
    assert_rules(host, "10.213.51.0/24")
    # a route of ours the last sync did not make (a crashed agent's) is removed too
    host.ip("route", "add", "10.213.60.0/24", "via", "192.168.77.6", "proto", "77")
    assert host.sync([moved]) == [moved]
    assert host.our_routes() == ["10.213.51.0/24 via 192.168.77.4 dev up0"]
    # nobody left: no route, no chain, no jump
    assert host.sync([]) == []
    assert host.our_routes() == []
    assert_no_rules(host)


def test_skipped_peers_do_not_stop_the_others(host: Host) -> None:
    host.link("br1", "10.213.53.1/24")  # another agent's bridge in this namespace
    good = [
        peer("good1", "10.213.51.0/24", "192.168.77.2"),
        peer("good2", "10.213.54.0/24", "192.168.77.4"),
    ]
    bad = {
        "loopback": peer("loopback", "10.213.55.0/24", "127.0.0.1"),
        "unspecified": peer("unspecified", "10.213.56.0/24", "0.0.0.0"),
        "garbage": peer("garbage", "10.213.57.0/24", "not-an-address"),
        "ipv6": peer("ipv6", "10.213.58.0/24", "fd00::2"),
        "own": peer("own", "10.213.59.0/24", "192.168.77.1"),
        "overlap": peer("overlap", "10.213.50.128/25", "192.168.77.5"),
        "connected": peer("connected", "10.213.53.0/24", "192.168.77.6"),
        "unreachable": peer("unreachable", "10.213.61.0/24", "172.31.9.9"),
        "same-subnet": peer("same-subnet", "10.213.51.0/24", "192.168.77.7"),
        "bad-subnet": peer("bad-subnet", "10.213.62.1/24", "192.168.77.8"),
    }
    peers = [good[0], *bad.values(), good[1]]
    assert host.sync(peers) == good
    assert host.our_routes() == [
        "10.213.51.0/24 via 192.168.77.2 dev up0",
        "10.213.54.0/24 via 192.168.77.4 dev up0",
    ]
    assert_rules(host, "10.213.51.0/24", "10.213.54.0/24")
    # the connected route of the other bridge is left as it was
    assert "10.213.53.0/24 dev br1 proto kernel scope link src 10.213.53.1" in host.routes()
    skipped = {e["node_id"]: e for e in host.logs[-1] if e["event"] == "peer not routed"}
    assert sorted(skipped) == sorted(bad)
    reasons = {name: e["reason"] for name, e in skipped.items()}
    assert "Nexthop has invalid gateway" in reasons["unreachable"]
    assert skipped["unreachable"]["level"] == "warning"
    assert all(e["level"] == "info" for n, e in skipped.items() if n != "unreachable")
    assert "is not a host address" in reasons["loopback"]
    assert "is not a host address" in reasons["unspecified"]
    assert "not an IPv4 address" in reasons["garbage"] and "not an IPv4" in reasons["ipv6"]
    assert "is this host's own" in reasons["own"]
    assert "overlaps the local subnet" in reasons["overlap"]
    assert "already routed here: 10.213.53.0/24" in reasons["connected"]
    assert "overlaps node good1's" in reasons["same-subnet"]
    assert "host bits set" in reasons["bad-subnet"]


def test_clear_removes_routes_chains_and_jumps(host: Host, hosts: Callable[[str], Host]) -> None:
    host.ip("route", "add", "10.99.0.0/16", "via", "192.168.77.9", "proto", "static")
    peers = [peer("n2", "10.213.51.0/24", "192.168.77.2")]
    assert host.sync(peers) == peers
    host.clear()
    assert host.our_routes() == []
    assert_no_rules(host)
    assert host.chains("filter")["FORWARD"] == ["-A FORWARD -i up0 -j DROP"]
    assert "10.99.0.0/16 via 192.168.77.9 dev up0 proto static" in host.routes()
    host.clear()  # nothing left: nothing to do
    # where there never was anything, clear makes nothing either
    empty = hosts("b")
    empty.clear()
    assert_no_rules(empty)


def test_a_bad_local_subnet_is_a_network_error() -> None:
    import asyncio

    with pytest.raises(NetworkError, match="local subnet"):
        asyncio.run(
            PeerRoutes().sync("10.213.50.1/33", [PeerRoute("n2", "10.213.51.0/24", "192.168.77.2")])
        )


ERRORS = """
import asyncio
from dockyard.agent.network.errors import NetworkError
from dockyard.agent.network.routes import iptables_command

async def main():
    calls = [(("-w", "-t", "nat", "-A", "DYRT-NOPE", "-j", "ACCEPT"), {}),
             (("--noflush", "-w"), {"tool": "iptables-restore",
                                    "stdin": "*filter\\n-A FORWARD -j DYRT-NOPE\\nCOMMIT\\n"})]
    for args, kwargs in calls:
        try:
            await iptables_command(*args, **kwargs)
        except NetworkError as exc:
            print(str(exc).replace("\\n", " "))
        else:
            print("no error")
    print(await iptables_command("-w", "-t", "nat", "-A", "DYRT-NOPE", check=False))

asyncio.run(main())
"""


def test_iptables_failures_name_the_command_and_its_error(hosts: Callable[[str], Host]) -> None:
    lines = hosts("a").exec(sys.executable, "-c", ERRORS).stdout.splitlines()
    assert lines[0].startswith("iptables -w -t nat -A DYRT-NOPE -j ACCEPT failed (1): ")
    assert "No chain/target/match by that name" in lines[0]
    assert lines[1].startswith("iptables-restore --noflush -w failed (")
    assert "DYRT-NOPE" in lines[1] and "-A FORWARD -j DYRT-NOPE" in lines[1]
    assert "Try `" not in lines[1]
    assert lines[2].startswith("(1, '', ")  # check=False: the status, no exception


SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(addr[0].encode(), addr)
"""

CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
    print(s.recv(2048).decode())
except OSError as exc:
    print(f"error: {exc!r}")
"""


def test_packets_cross_hosts_with_the_container_address(hosts: Callable[[str], Host]) -> None:
    """Two hosts on one link, each with a "container" behind its "bridge"; FORWARD DROP
    and the bridge plugin's MASQUERADE on both. After a sync on each, a container
    reaches the other host's container, which sees its real address."""
    host_a, host_b, ctr_a, ctr_b = hosts("ha"), hosts("hb"), hosts("ca"), hosts("cb")
    host_a.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", host_b.name)
    sides = (
        (host_a, ctr_a, "192.168.77.1", "10.213.50"),
        (host_b, ctr_b, "192.168.77.2", "10.213.51"),
    )
    for h, ctr, address, prefix in sides:
        h.ip("addr", "add", f"{address}/24", "dev", "eth0")
        h.ip("link", "set", "eth0", "up")
        h.ip("link", "add", "ctr0", "type", "veth", "peer", "name", "eth0", "netns", ctr.name)
        h.ip("addr", "add", f"{prefix}.1/24", "dev", "ctr0")
        h.ip("link", "set", "ctr0", "up")
        ctr.ip("addr", "add", f"{prefix}.2/24", "dev", "eth0")
        ctr.ip("link", "set", "eth0", "up")
        ctr.ip("route", "add", "default", "via", f"{prefix}.1")
        h.forward()
        h.iptables("-P", "FORWARD", "DROP")
        h.iptables(
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            f"{prefix}.0/24",
            "!",
            "-d",
            f"{prefix}.0/24",
            "-j",
            "MASQUERADE",
        )

    server = subprocess.Popen(
        ["ip", "netns", "exec", ctr_b.name, sys.executable, "-c", SERVER, "7777"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"

        def ask() -> str:
            return ctr_a.exec(sys.executable, "-c", CLIENT, "10.213.51.2", "7777").stdout.strip()

        assert ask().startswith("error:")  # no route yet (and FORWARD drops)
        a_peers = [peer("b", "10.213.51.0/24", "192.168.77.2")]
        b_peers = [peer("a", "10.213.50.0/24", "192.168.77.1")]
        assert host_a.sync(a_peers, local="10.213.50.0/24") == a_peers
        assert host_b.sync(b_peers, local="10.213.51.0/24") == b_peers
        # through both FORWARD chains, not masqueraded: B's container sees A's
        assert ask() == "10.213.50.2"
        if shutil.which("ping"):
            ctr_a.exec("ping", "-c1", "-W2", "10.213.51.2")
            host_a.exec("ping", "-c1", "-W2", "10.213.51.1")
        # without the rules (routes kept), FORWARD drops it again
        for h in (host_a, host_b):
            h.iptables(
                "-D", "FORWARD", "-m", "comment", "--comment", "dockyard peer route", "-j", CHAIN
            )
        assert ask().startswith("error:")
        # a sync puts the jump back
        assert host_a.sync(a_peers, local="10.213.50.0/24") == a_peers
        assert host_b.sync(b_peers, local="10.213.51.0/24") == b_peers
        assert ask() == "10.213.50.2"
    finally:
        server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
