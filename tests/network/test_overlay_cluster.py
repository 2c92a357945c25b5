"""Overlay networks end to end: `deploy/local-cluster up --hosts 2` (each runc agent in a
network namespace of its own), two cluster networks, services on them: a task reaches
another by name only on a shared network, the name's VIP spreads over the tasks on both
hosts, and the names follow a scale-down.

The containers' namespaces are named (``/run/netns``), so the test looks from inside a
task with ``ip netns exec`` and asks the node's DNS server (its bridge's gateway) itself.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.network.conftest import free_subnet
from tests.test_local_cluster import LocalCluster, _local_cluster, _offsets

pytestmark = [pytest.mark.runc, pytest.mark.registry, pytest.mark.slow]

WEB = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp_path = tmp_path_factory.mktemp("overlay-cluster")
    for lc in _local_cluster(tmp_path, _offsets(2), 2):
        lan = ipaddress.IPv4Network(free_subnet())
        lc.up("--hosts", "2", "--lan", str(lan), "--no-sample")
        try:
            yield lc
        finally:  # kept for a failure's post-mortem (the state dir goes with `down`)
            shutil.copytree(lc.state_dir / "logs", tmp_path / "logs", dirs_exist_ok=True)


def ok(lc: LocalCluster, *args: str) -> str:
    done = lc.cli(*args)
    assert done.returncode == 0, f"dockyard {' '.join(args)}: {done.stderr}"
    return done.stdout


def wait(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 60,
    explain: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{explain()}")


def tasks(lc: LocalCluster, service: str) -> list[dict[str, object]]:
    found = json.loads(ok(lc, "service", "ps", service, "-o", "json"))
    return [t for t in found if t["desired_state"] == "RUNNING"]


def running(lc: LocalCluster, service: str, count: int) -> bool:
    return sum(t["status"]["state"] == "RUNNING" for t in tasks(lc, service)) == count  # type: ignore[index]


def netns_of(address: str) -> str:
    """The named namespace whose interfaces hold ``address``."""
    for entry in sorted(Path("/run/netns").iterdir()):
        shown = subprocess.run(
            ["ip", "-n", entry.name, "-4", "-o", "addr"], capture_output=True, text=True
        ).stdout
        if f" {address}/" in shown:
            return entry.name
    raise AssertionError(f"no namespace has {address}")


def inside(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "timeout", "5", "busybox", *args],
        capture_output=True,
        text=True,
    )


def lookup(netns: str, name: str) -> list[str]:
    """A records of ``name`` from the node's DNS server, asked from inside ``netns``."""
    eth0 = subprocess.run(
        ["ip", "-n", netns, "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True
    ).stdout.split()
    gateway = str(ipaddress.IPv4Interface(eth0[3]).network.network_address + 1)
    answer = inside(netns, "nslookup", name, gateway).stdout
    lines = answer.split("Name:", 1)[-1] if "Name:" in answer else ""
    return sorted(w for w in lines.split() if w.count(".") == 3 and w != gateway)


def test_names_vips_and_isolation_across_hosts(cluster: LocalCluster) -> None:
    lc = cluster
    ok(lc, "network", "create", "red")
    ok(lc, "network", "create", "blue")
    ok(lc, "service", "create", "-d", "--name", "web", "--replicas", "2", "--max-replicas-per-node",
       "1", "--network", "name=red,alias=www", "busybox", "sh", "-c", WEB)  # fmt: skip
    ok(lc, "service", "create", "-d", "--name", "probe", "--network", "red", "--network", "blue",
       "busybox", "sleep", "3600")  # fmt: skip
    ok(lc, "service", "create", "-d", "--name", "outsider", "--network", "blue",
       "busybox", "sleep", "3600")  # fmt: skip
    for name, count in (("web", 2), ("probe", 1), ("outsider", 1)):
        wait(
            lambda n=name, c=count: running(lc, n, c),
            f"{name} running",
            explain=lambda n=name: ok(lc, "service", "ps", "--no-trunc", n),
        )
    web = json.loads(ok(lc, "service", "inspect", "web"))[0]
    vip = web["spec"]["task"]["networks"][0]["vip"]
    red_id = web["spec"]["task"]["networks"][0]["network_id"]
    web_addresses = sorted(
        n["address"]
        for t in tasks(lc, "web")
        for n in t["networks"]  # type: ignore[attr-defined]
    )
    probe_task = tasks(lc, "probe")[0]
    probe_red = next(n["address"] for n in probe_task["networks"] if n["network_id"] == red_id)  # type: ignore[attr-defined]
    probe = netns_of(probe_red)
    outsider = netns_of(tasks(lc, "outsider")[0]["networks"][0]["address"])  # type: ignore[index]

    wait(lambda: lookup(probe, "web") == [vip], "web's VIP in DNS")
    assert lookup(probe, "www") == [vip]  # the alias
    wait(lambda: lookup(probe, "tasks.web") == web_addresses, "tasks.web")
    served = {inside(probe, "wget", "-qO-", f"http://{vip}/").stdout.strip() for _ in range(20)}
    assert len(served) == 2, served  # both tasks, one on each host, through the one VIP
    for address in web_addresses:  # and each task directly, across the hosts
        assert inside(probe, "wget", "-qO-", f"http://{address}/").returncode == 0

    assert lookup(outsider, "web") == []  # not on red: no name ...
    assert inside(outsider, "wget", "-qO-", f"http://{web_addresses[0]}/").returncode != 0

    ok(lc, "service", "scale", "-d", "web=1")
    wait(lambda: running(lc, "web", 1), "web scaled down")
    left = [n["address"] for t in tasks(lc, "web") for n in t["networks"]]  # type: ignore[attr-defined]
    wait(lambda: lookup(probe, "tasks.web") == left, "tasks.web after the scale-down")
    served = {inside(probe, "wget", "-qO-", f"http://{vip}/").stdout.strip() for _ in range(10)}
    assert len(served) == 1, served
