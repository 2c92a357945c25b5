"""A compose stack on a real cluster whose hosts share no L2 segment (issue 11's test).

`deploy/local-cluster up --hosts 3 --segments 2`: a controller, its etcd, three runc
agents, each in a network namespace of its own ("host"); hosts 1 and 3 on one L2
segment, host 2 on another, joined by a router namespace, so a container on one segment
reaches one on the other only through the overlay's VXLAN. `dockyard stack deploy` of
four services on two networks (and the stack's default network):

- by short name each service reaches only what shares a network with it;
- a name's VIP load-balances over tasks on different hosts;
- the routing mesh (a port published with ``mode: ingress``) answers on every host's
  address, including one that runs no task;
- scaled up, the VIP spreads over every host; a host cut off from its segment goes DOWN,
  its tasks are replaced elsewhere, and the VIP, ``tasks.NAME`` and the mesh follow.

The containers' namespaces are named (``/run/netns``), so the test looks from inside a
task with ``ip netns exec`` and asks the node's DNS server itself.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.network.conftest import free_subnet
from tests.network.test_overlay_cluster import inside, lookup, ok, running, tasks, wait
from tests.test_local_cluster import LocalCluster, _local_cluster, _offsets

pytestmark = [pytest.mark.runc, pytest.mark.registry, pytest.mark.slow]

PORT = 18490
WEB = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"

COMPOSE = f"""
services:
  web:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    networks: [front]
    ports:
      - {{target: 80, published: {PORT}, protocol: tcp, mode: ingress}}
    deploy:
      replicas: 2
      placement: {{max_replicas_per_node: 1}}
  api:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    networks: [front, back]
    deploy:
      placement: {{constraints: [node.name == node-1]}}
  db:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    networks: [back]
    deploy:
      placement: {{constraints: [node.name != node-1]}}
  solo:
    image: busybox
    command: ["sleep", "3600"]
networks:
  front: {{}}
  back: {{}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp_path = tmp_path_factory.mktemp("stack-segments")
    for lc in _local_cluster(tmp_path, _offsets(3), 3):
        lan = ipaddress.IPv4Network(free_subnet())
        out = lc.up("--hosts", "3", "--segments", "2", "--lan", str(lan), "--no-sample")
        assert "joined by the router namespace" in out, out
        try:
            yield lc
        finally:  # kept for a failure's post-mortem (the state dir goes with `down`)
            for n in (1, 2, 3):  # a host cut off by the test comes back for `down`
                subprocess.run(["ip", "link", "set", f"{lc.prefix}h{n}", "up"], check=False)
            shutil.copytree(lc.state_dir / "logs", tmp_path / "logs", dirs_exist_ok=True)


def running_tasks(lc: LocalCluster, service: str) -> list[dict[str, Any]]:
    return [t for t in tasks(lc, service) if t["status"]["state"] == "RUNNING"]  # type: ignore[index]


def address_on(task: dict[str, Any], network_id: str) -> str:
    return str(next(n["address"] for n in task["networks"] if n["network_id"] == network_id))


def netns_of(lc: LocalCluster, address: str) -> str:
    """The namespace of this cluster's container whose interfaces hold ``address``
    (another cluster on this machine may use the same overlay addresses)."""
    for entry in sorted(Path("/run/netns").glob(f"dy-{lc.prefix}node-*")):
        shown = subprocess.run(
            ["ip", "-n", entry.name, "-4", "-o", "addr"], capture_output=True, text=True
        ).stdout
        if f" {address}/" in shown:
            return entry.name
    raise AssertionError(f"no container of the cluster has {address}")


def fetch(netns: str, name: str) -> str:
    """``http://NAME/`` from inside ``netns``: the name as the container resolves it (its
    node's DNS server: ``ip netns exec`` keeps this machine's resolv.conf), then the
    address it names; "" when the name or the address does not answer."""
    addresses = lookup(netns, name)
    if not addresses:
        return ""
    return inside(netns, "wget", "-qO-", f"http://{addresses[0]}/").stdout.strip()


def served(netns: str, name: str, times: int = 20) -> set[str]:
    """What ``name`` answers from ``netns``, asked ``times`` times."""
    (vip,) = lookup(netns, name)
    answers = (inside(netns, "wget", "-qO-", f"http://{vip}/") for _ in range(times))
    return {a.stdout.strip() for a in answers if a.returncode == 0}


def mesh(address: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}:{PORT}/", timeout=3) as response:
            return str(response.read().decode().strip())
    except OSError as exc:
        return f"error: {exc}"


@dataclass
class Stack:
    """The deployed stack as the test sees it."""

    lc: LocalCluster
    host_of: dict[str, str]  # node ID -> its host's address
    name_of: dict[str, str]  # node ID -> its name
    nets: dict[str, str]  # front, back, default -> network ID
    task: dict[str, dict[str, Any]]  # api, db, solo, web -> a running task
    netns: dict[str, str]  # api, db, solo, web -> its task's namespace

    def vip(self, service: str, network: str) -> str:
        spec = json.loads(ok(self.lc, "service", "inspect", f"shop_{service}"))[0]["spec"]
        wanted = self.nets[network]
        return next(n["vip"] for n in spec["task"]["networks"] if n["network_id"] == wanted)


def deploy(lc: LocalCluster, directory: Path) -> Stack:
    nodes = {n["spec"]["name"]: n for n in json.loads(ok(lc, "node", "ls", "-o", "json"))}
    segment = {
        name: ipaddress.IPv4Network(f"{n['network']['address']}/25", strict=False)
        for name, n in nodes.items()
    }
    assert segment["node-1"] == segment["node-3"] != segment["node-2"]
    compose = directory / "compose.yml"
    compose.write_text(COMPOSE)
    ok(lc, "stack", "deploy", "-c", str(compose), "shop")
    listed = json.loads(ok(lc, "network", "ls", "-o", "json"))
    nets = {n["spec"]["name"].removeprefix("shop_"): n["id"] for n in listed}
    for name, count in (("web", 2), ("api", 1), ("db", 1), ("solo", 1)):
        wait(
            lambda n=name, c=count: running(lc, f"shop_{n}", c),
            f"shop_{name} running",
            timeout=120,
            explain=lambda n=name: ok(lc, "service", "ps", "--no-trunc", f"shop_{n}"),
        )
    task = {name: running_tasks(lc, f"shop_{name}")[0] for name in ("api", "db", "solo", "web")}
    on = {"api": "front", "db": "back", "solo": "default", "web": "front"}
    return Stack(
        lc,
        {n["id"]: n["network"]["address"] for n in nodes.values()},
        {n["id"]: name for name, n in nodes.items()},
        nets,
        task,
        {name: netns_of(lc, address_on(t, nets[on[name]])) for name, t in task.items()},
    )


def check_names(stack: Stack) -> None:
    """By short name each service reaches what shares a network with it, only that."""
    ns = stack.netns
    wait(lambda: lookup(ns["api"], "web") == [stack.vip("web", "front")], "web's VIP from api")
    assert lookup(ns["api"], "db") == [stack.vip("db", "back")]
    assert lookup(ns["web"], "api") == [stack.vip("api", "front")]
    assert lookup(ns["db"], "api") == [stack.vip("api", "back")]
    for client, name in (("web", "db"), ("db", "web"), ("solo", "web"), ("solo", "api")):
        assert lookup(ns[client], name) == [], f"{name} resolves from {client}"
    assert fetch(ns["web"], "api") and fetch(ns["db"], "api") and fetch(ns["api"], "db")
    # ... and not by address either: the networks do not route to each other
    db_back = address_on(stack.task["db"], stack.nets["back"])
    web_front = address_on(stack.task["web"], stack.nets["front"])
    assert inside(ns["web"], "wget", "-qO-", f"http://{db_back}/").returncode != 0
    assert inside(ns["solo"], "wget", "-qO-", f"http://{web_front}/").returncode != 0


def check_vip_and_mesh(stack: Stack) -> None:
    """web's VIP over its two tasks on two hosts; the mesh on every host's address,
    the one without a web task too; then scaled to a task on every host."""
    lc, api = stack.lc, stack.netns["api"]
    webs = running_tasks(lc, "shop_web")
    assert len({t["node_id"] for t in webs}) == 2
    wait(lambda: len(served(api, "web")) == 2, "web's VIP over both tasks",
         explain=lambda: str(served(api, "web")))  # fmt: skip
    assert len(set(stack.host_of) - {t["node_id"] for t in webs}) == 1  # a host with none
    for address in stack.host_of.values():
        wait(lambda a=address: not mesh(a).startswith("error"), f"the mesh on {address}",
             explain=lambda a=address: mesh(a))  # fmt: skip
    ok(lc, "service", "scale", "-d", "shop_web=3")
    wait(lambda: running(lc, "shop_web", 3), "shop_web on three hosts")
    wait(lambda: len(served(api, "web", 30)) == 3, "web's VIP over three hosts",
         explain=lambda: str(served(api, "web", 30)))  # fmt: skip


def cut_db_host(stack: Stack) -> tuple[str, set[str]]:
    """Cut db's host (never api's) off its segment; (its node ID, what its web task
    answers)."""
    lc, front = stack.lc, stack.nets["front"]
    victim = str(stack.task["db"]["node_id"])
    assert stack.name_of[victim] != "node-1"
    dead = [address_on(t, front) for t in running_tasks(lc, "shop_web") if t["node_id"] == victim]
    gone = {inside(stack.netns["api"], "wget", "-qO-", f"http://{a}/").stdout.strip() for a in dead}
    assert len(gone) == 1 and all(gone), gone
    veth = f"{lc.prefix}h{stack.name_of[victim].removeprefix('node-')}"
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    return victim, gone


def check_after_the_cut(stack: Stack, victim: str, gone: set[str]) -> None:
    """db replaced on the other host, the VIPs, tasks.NAME and the mesh without the cut
    host's tasks."""
    lc, api = stack.lc, stack.netns["api"]

    def db_moved() -> bool:
        now = running_tasks(lc, "shop_db")
        return len(now) == 1 and now[0]["node_id"] != victim

    wait(db_moved, "db replaced on another host", timeout=120,
         explain=lambda: ok(lc, "service", "ps", "--no-trunc", "shop_db"))  # fmt: skip
    new_db = address_on(running_tasks(lc, "shop_db")[0], stack.nets["back"])
    assert new_db != address_on(stack.task["db"], stack.nets["back"])
    wait(lambda: lookup(api, "tasks.db") == [new_db], "tasks.db after the cut",
         explain=lambda: str(lookup(api, "tasks.db")))  # fmt: skip
    assert lookup(api, "db") == [stack.vip("db", "back")]  # the same VIP, a new backend
    wait(lambda: bool(served(api, "db", 3)), "db's VIP reaching the new task")

    live = sorted(address_on(t, stack.nets["front"]) for t in running_tasks(lc, "shop_web"))
    assert len(live) == 2 and all(t["node_id"] != victim for t in running_tasks(lc, "shop_web"))
    wait(lambda: lookup(api, "tasks.web") == live, "tasks.web after the cut",
         explain=lambda: str(lookup(api, "tasks.web")))  # fmt: skip
    after = served(api, "web", 30)
    assert len(after) == 2 and not after & gone, after
    for node_id, address in stack.host_of.items():
        if node_id != victim:
            answers = {mesh(address) for _ in range(10)}
            assert not any(a.startswith("error") for a in answers), answers
            assert not answers & gone, answers


@pytest.mark.timeout(600)
def test_a_stack_across_two_segments(cluster: LocalCluster, tmp_path: Path) -> None:
    stack = deploy(cluster, tmp_path)
    check_names(stack)
    check_vip_and_mesh(stack)
    victim, gone = cut_db_host(stack)
    check_after_the_cut(stack, victim, gone)
    ok(cluster, "stack", "rm", "shop")
