"""`dockyard-agent hollow`: many simulated agents in one process, against a real controller."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import BIN, Cluster, Daemon


def test_hollow_agents_register_as_ready_nodes(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(heartbeat=1.0, grace=5.0, insecure=True)  # the fleet is plaintext
    cluster.start_controller()
    args = [
        str(BIN / "dockyard-agent"),
        "hollow",
        "--controller",
        cluster.address,
        "--count",
        "50",
        "--name-prefix",
        "hollow",
        "--state-dir",
        str(cluster.root / "hollow"),
        "--cpus",
        "2",
        "--memory",
        "4G",
    ]
    cluster.agents["hollow"] = Daemon("hollow", args, cluster.root / "hollow.log").start()

    def all_ready() -> bool:
        nodes = cluster.nodes()
        return len(nodes) == 50 and all(n["status"]["state"] == "READY" for n in nodes.values())

    cluster.wait_for(all_ready, "50 hollow nodes READY", 60)
    nodes = cluster.nodes()
    assert sorted(nodes) == [f"hollow-{i:04d}" for i in range(1, 51)]
    node = nodes["hollow-0007"]
    assert node["description"]["runtime"] == "hollow"
    assert node["description"]["hostname"] == "hollow-0007"
    assert int(node["description"]["resources"]["nano_cpus"]) == 2_000_000_000
    assert (cluster.root / "hollow" / "hollow-0007" / "node.json").exists()
    assert cluster.agents["hollow"].process is not None
    assert cluster.agents["hollow"].process.poll() is None
