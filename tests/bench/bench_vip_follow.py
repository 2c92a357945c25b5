"""How fast a service's VIP and DNS names follow its tasks, end to end, on a real cluster.

    python tests/bench/bench_vip_follow.py [--rounds 5] [--hosts 2] [--time-limit 1500]

Run as root, from the repository with its virtualenv. Starts its own cluster with
`deploy/local-cluster up` (own state dir, ports, subnet pool, bridge prefix, cgroup
parent and CLI context; `--hosts 2`: each agent in a network namespace of its own, so
the VIP's backends sit behind a real VXLAN overlay; `--hosts 0`: the agents share this
host), an overlay network, a `web` service (busybox httpd answering with its task ID)
and a `client` service (busybox sleep) on it. Then, each round:

  scale up    web +1; from the new task's RUNNING (its status timestamp, set by its
              agent) until `tasks.web`, asked from inside the client's namespace of the
              client's node DNS server, lists its address (dns), and until a fetch of
              http://VIP/ from there first reaches it (vip)
  scale down  web -1; from the `service scale` command until the removed task's address
              is gone from `tasks.web` (dns), and until the VIP stops sending
              connections to it (vip: the time of the last failed or misrouted fetch,
              followed by 40 good ones)

The probe (tests/bench/vip_probe.py) runs inside the client's namespace and polls
every ~10 ms, so its own cost is not in the numbers. Baseline, same cluster, same
rounds: the plain control path, from `service scale` to the new task RUNNING (up) and
to the removed task's last status (down). Prints medians, p99 and `uptime`. The cluster
is brought down with `down --purge` at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.benchlib import install_limits
from tests.network.conftest import free_subnet
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything, cleanup_network
from tests.test_local_cluster import LocalCluster, _free_pool, _offsets, _port_base

PROBE = Path(__file__).with_name("vip_probe.py")
# httpd under a shell that exits on SIGTERM: a removed task stops at once (httpd as PID 1
# would ignore SIGTERM and wait out the 10 s grace period), so a VIP that kept sending to
# it after it stopped would show as failed fetches.
WEB = "trap 'exit 0' TERM; mkdir -p /w && echo $TASK > /w/index.html && httpd -f -p 80 -h /w & wait"
NETWORK = "vipbench"


def cluster(tmp: Path, hosts: int) -> LocalCluster:
    nodes = max(hosts, 2)
    offsets = _offsets(nodes)
    base = _port_base(offsets)
    others: list[int] = []
    while len(others) < 2:
        port = free_port()
        if port - base not in offsets:
            others.append(port)
    tag = uuid.uuid4().hex[:3]
    return LocalCluster(
        tmp / "state", base, others[0], others[1], _free_pool(), f"dyv{tag}-",
        f"dockyard-vb-{tag}", f"vb-{tag}", nodes,
    )  # fmt: skip


def tear_down(lc: LocalCluster) -> None:
    """`down`, then whatever it missed, then `down --purge` (as the tests' fixture)."""
    lc.run("down")
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and str(lc.state_dir).encode() in (entry / "cmdline").read_bytes()
            ):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
    for name in (f"node-{n}" for n in range(1, lc.nodes + 1)):
        agent = lc.state_dir / "agents" / name
        cleanup_everything(agent / "runtime", lc.cgroup)
        cleanup_network(agent / "network", f"{lc.prefix}{name}", [p.strip() for p in lc.patterns])
    done = lc.run("down", "--purge")
    print(f"local-cluster down --purge: exit {done.returncode}", file=sys.stderr)


def ok(lc: LocalCluster, *args: str) -> str:
    done = lc.cli(*args)
    if done.returncode:
        raise RuntimeError(f"dockyard {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def wait(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def tasks(lc: LocalCluster, service: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok(lc, "service", "ps", service, "-o", "json"))
    return found


def running(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        t["id"]: t
        for t in found
        if t["desired_state"] == "RUNNING" and t["status"]["state"] == "RUNNING"
    }


def stamp(task: dict[str, Any]) -> float:
    return datetime.fromisoformat(task["status"]["timestamp"]).timestamp()


def address(task: dict[str, Any]) -> str:
    return str(task["networks"][0]["address"]).split("/")[0]


def netns_of(lc: LocalCluster, addr: str) -> str:
    """The named namespace of this cluster's container that holds ``addr``."""
    for entry in sorted(Path("/run/netns").glob(f"dy-{lc.prefix}node-*")):
        shown = subprocess.run(
            ["ip", "-n", entry.name, "-4", "-o", "addr"], capture_output=True, text=True
        ).stdout
        if f" {addr}/" in shown:
            return entry.name
    raise RuntimeError(f"no container of the cluster has {addr}")


def dns_server(netns: str) -> str:
    """The node's DNS server: the gateway of the container's eth0 network."""
    words = subprocess.run(
        ["ip", "-n", netns, "-4", "-o", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return str(ipaddress.IPv4Interface(words[3]).network.network_address + 1)


class Probe:
    """vip_probe.py inside the client's namespace, for one round."""

    def __init__(self, netns: str, mode: str, count: int, vip: str, server: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(PROBE), mode, str(count), vip,
             server, "90"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def log(self) -> dict[str, list[Any]]:
        out, _ = self.process.communicate(timeout=120)
        log: dict[str, list[Any]] = json.loads(out)
        return log


def first_after(entries: list[Any], since: float, good: Callable[[Any], bool]) -> float:
    """The time of the first entry at or after ``since`` that is good, with every later
    one good too (nan when the log never settles so)."""
    result = math.nan
    for when, value in entries:
        if when < since:
            continue
        if good(value):
            if math.isnan(result):
                result = when
        else:
            result = math.nan
    return result


def first_seen(entries: list[Any], good: Callable[[Any], bool]) -> float:
    return next((when for when, value in entries if good(value)), math.nan)


def scale(lc: LocalCluster, replicas: int) -> float:
    started = time.time()
    ok(lc, "service", "scale", "-d", f"web={replicas}")
    return started


def round_up(
    lc: LocalCluster, netns: str, vip: str, server: str, replicas: int
) -> dict[str, float]:
    before = set(running(tasks(lc, "web")))
    probe = Probe(netns, "up", replicas + 1, vip, server)
    time.sleep(0.3)  # the probe has started asking
    command = scale(lc, replicas + 1)
    new: dict[str, Any] = {}
    seen = math.nan

    def appeared() -> bool:
        nonlocal new, seen
        now = running(tasks(lc, "web"))
        fresh = [t for i, t in now.items() if i not in before]
        if fresh:
            new, seen = fresh[0], time.time()
        return bool(fresh)

    wait(appeared, "the new web task RUNNING")
    log = probe.log()
    at, ip = stamp(new), address(new)
    return {
        "control": at - command,
        "cli_sees_running": seen - command,
        "dns": first_seen(log["dns"], lambda names: names is not None and ip in names) - at,
        "vip": first_seen(log["vip"], lambda body: body == new["id"]) - at,
    }


def round_down(
    lc: LocalCluster, netns: str, vip: str, server: str, replicas: int
) -> dict[str, float]:
    before = running(tasks(lc, "web"))
    probe = Probe(netns, "down", replicas - 1, vip, server)
    time.sleep(0.3)
    command = scale(lc, replicas - 1)
    gone: dict[str, Any] = {}

    def removed() -> bool:
        nonlocal gone
        for task in tasks(lc, "web"):
            if task["id"] in before and task["status"]["state"] not in ("RUNNING", "STARTING"):
                gone = task
        return bool(gone)

    wait(removed, "a web task stopped")
    log = probe.log()
    ip = address(gone)
    return {
        "control": stamp(gone) - command,
        "dns": first_after(log["dns"], command, lambda n: n is not None and ip not in n) - command,
        "vip": first_after(log["vip"], command, lambda body: bool(body) and body != gone["id"])
        - command,
        "failed_fetches": float(
            sum(1 for when, body in log["vip"] if when >= command and not body)
        ),
    }


def stats(values: list[float]) -> str:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return "n/a"
    p99 = clean[min(len(clean) - 1, math.ceil(0.99 * len(clean)) - 1)]
    median = clean[len(clean) // 2] if len(clean) % 2 else sum(clean[len(clean) // 2 - 1 :][:2]) / 2
    missing = len(values) - len(clean)
    return f"median {median:7.3f} s  p99 {p99:7.3f} s" + (
        f"  ({missing} unsettled)" if missing else ""
    )


def report(ups: list[dict[str, float]], downs: list[dict[str, float]], hosts: int) -> None:
    def col(rows: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in rows]

    mode = f"{hosts} hosts (VXLAN)" if hosts else "one host (shared overlay bridge)"
    print(f"\n== VIP/DNS follow, {len(ups)} rounds, {mode}")
    print(f"scale up   baseline: command -> task RUNNING      {stats(col(ups, 'control'))}")
    print(
        f"           (CLI polling sees RUNNING after        {stats(col(ups, 'cli_sees_running'))})"
    )
    print(f"           RUNNING -> tasks.web lists it          {stats(col(ups, 'dns'))}")
    print(f"           RUNNING -> a VIP fetch reaches it      {stats(col(ups, 'vip'))}")
    print(f"scale down baseline: command -> task stopped      {stats(col(downs, 'control'))}")
    print(f"           command -> gone from tasks.web         {stats(col(downs, 'dns'))}")
    print(f"           command -> VIP no longer sends to it   {stats(col(downs, 'vip'))}")
    failed = col(downs, "failed_fetches")
    print(f"           failed VIP fetches per scale-down      {failed}")
    for name, rows, key in (("up dns", ups, "dns"), ("up vip", ups, "vip")):
        ratios = [r[key] / r["control"] for r in rows if r["control"] > 0]
        print(f"ratio {name} / control path: {stats(ratios).replace(' s', '')}")
    for key in ("dns", "vip"):
        ratios = [r[key] / r["control"] for r in downs if r["control"] > 0]
        print(f"ratio down {key} / control path: {stats(ratios).replace(' s', '')}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


def setup(lc: LocalCluster, hosts: int) -> tuple[str, str, str]:
    """The cluster, network and services; the client's namespace, the VIP, the DNS server."""
    extra = ["--hosts", str(hosts), "--lan", free_subnet()] if hosts else []
    print(lc.up("--no-sample", *extra).strip().splitlines()[-1], file=sys.stderr)
    ok(lc, "network", "create", NETWORK)
    ok(lc, "service", "create", "-d", "--name", "web", "--network", NETWORK,
       "-e", "TASK={{.Task.ID}}", "busybox", "sh", "-c", WEB)  # fmt: skip
    ok(lc, "service", "create", "-d", "--name", "client", "--network", NETWORK,
       "busybox", "sleep", "36000")  # fmt: skip
    for name in ("web", "client"):
        wait(lambda n=name: len(running(tasks(lc, n))) == 1, f"{name} running")  # type: ignore[misc]
    vip = json.loads(ok(lc, "service", "inspect", "web"))[0]["spec"]["task"]["networks"][0]["vip"]
    netns = netns_of(lc, address(next(iter(running(tasks(lc, "client")).values()))))
    return netns, str(vip).split("/")[0], dns_server(netns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=2, help="0: the agents share this host")
    parser.add_argument("--time-limit", type=float, default=1500)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the cluster's agents and the probe's `ip netns exec`)")
    install_limits(args.time_limit)
    with tempfile.TemporaryDirectory(prefix="vipbench-") as tmp:
        lc = cluster(Path(tmp), args.hosts)
        try:
            netns, vip, server = setup(lc, args.hosts)
            ups, downs = [], []
            for number in range(args.rounds):  # up then down: web goes 1 -> 2 -> 1
                ups.append(round_up(lc, netns, vip, server, 1))
                downs.append(round_down(lc, netns, vip, server, 2))
                print(f"round {number + 1}: up {ups[-1]}  down {downs[-1]}", file=sys.stderr)
            report(ups, downs, args.hosts)
        finally:
            signal.alarm(0)
            tear_down(lc)


if __name__ == "__main__":
    main()
