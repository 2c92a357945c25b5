"""A stack's networks on the quickstart's cluster: `deploy/local-cluster up` without
`--hosts`, two runc agents sharing this machine (the controller sees them at loopback
addresses). They share one bridge per overlay network, no VXLAN (agent/network/overlay.py,
``shared``): the stack's services reach each other across the agents by short name and
VIP, and only on the networks they share; `down` removes the shared bridges.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent.network.overlay import shared_bridge_name
from tests.network.test_overlay_cluster import inside, lookup, ok, running, wait
from tests.network.test_stack_segments import (
    WEB,
    address_on,
    fetch,
    netns_of,
    running_tasks,
    served,
)
from tests.test_local_cluster import LocalCluster, _local_cluster, _offsets

pytestmark = [pytest.mark.runc, pytest.mark.registry, pytest.mark.slow]

COMPOSE = f"""
services:
  web:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    deploy:
      replicas: 2
      placement: {{max_replicas_per_node: 1}}
  api:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    networks: [default, back]
  db:
    image: busybox
    command: ["sh", "-c", "{WEB}"]
    networks: [back]
networks:
  back: {{}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp_path = tmp_path_factory.mktemp("stack-one-host")
    for lc in _local_cluster(tmp_path, _offsets(2), 2):
        out = lc.up("--no-sample")
        assert "mode: one host" in out, out
        try:
            yield lc
        finally:
            if (lc.state_dir / "logs").exists():
                shutil.copytree(lc.state_dir / "logs", tmp_path / "logs", dirs_exist_ok=True)


def bridges() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def test_a_stack_s_networks_on_agents_sharing_a_host(cluster: LocalCluster, tmp_path: Path) -> None:
    lc = cluster
    compose = tmp_path / "compose.yml"
    compose.write_text(COMPOSE)
    ok(lc, "stack", "deploy", "-c", str(compose), "one")
    listed = json.loads(ok(lc, "network", "ls", "-o", "json"))
    nets = {n["spec"]["name"].removeprefix("one_"): n["id"] for n in listed}
    for name, count in (("web", 2), ("api", 1), ("db", 1)):
        wait(
            lambda n=name, c=count: running(lc, f"one_{n}", c),
            f"one_{name} running",
            timeout=120,
            explain=lambda n=name: ok(lc, "service", "ps", "--no-trunc", f"one_{n}"),
        )
    webs = running_tasks(lc, "one_web")
    assert len({t["node_id"] for t in webs}) == 2  # one on each agent
    api = netns_of(lc, address_on(running_tasks(lc, "one_api")[0], nets["default"]))
    web = netns_of(lc, address_on(webs[0], nets["default"]))
    db_task = running_tasks(lc, "one_db")[0]
    db = netns_of(lc, address_on(db_task, nets["back"]))
    shared = {shared_bridge_name(nets["default"]), shared_bridge_name(nets["back"])}
    assert shared <= bridges()

    # STACK_default's VIP spreads over the tasks of both agents, by short name.
    wait(lambda: len(served(api, "web")) == 2, "web's VIP over both agents' tasks",
         explain=lambda: str(served(api, "web")))  # fmt: skip
    wait(lambda: bool(fetch(web, "api")), "api by name from web")
    assert fetch(api, "db") and fetch(db, "api")
    # only on shared networks: web (default only) neither resolves nor reaches db
    assert lookup(web, "db") == [] and lookup(db, "web") == []
    db_back = address_on(db_task, nets["back"])
    assert inside(web, "wget", "-qO-", f"http://{db_back}/").returncode != 0

    ok(lc, "stack", "rm", "one")
    down = lc.run("down")
    assert down.returncode == 0, down.stderr
    assert not shared & bridges(), "the shared bridges outlived `down`"
    leftover = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(b in leftover for b in shared)
