"""The version-skew policy (common/skew.py, docs/upgrades.md) and where the CLI shows it:
`dockyard version` lists every daemon of the cluster with its skew, `node ls` marks it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from dockyard.common.skew import agent_skew, controller_skew, minor_of, short
from tests.conftest import Cluster


@pytest.mark.parametrize(
    ("controller", "agent", "expected"),
    [
        ("0.2.0", "0.2.0", ""),
        ("0.2.3", "0.2.0", ""),  # patch versions never matter
        ("0.2.0", "0.1.9", "behind"),  # one minor behind: supported
        ("0.3.0", "0.1.0", "unsupported"),  # two behind
        ("0.2.0", "0.3.0", "unsupported"),  # agents never ahead of the controllers
        ("1.0.0", "0.9.0", "unsupported"),  # another major
        ("dev", "0.1.0", ""),  # not a release: not judged
    ],
)
def test_agent_skew(controller: str, agent: str, expected: str) -> None:
    assert short(agent_skew(controller, agent)) == expected


def test_agent_skew_says_what_to_do() -> None:
    assert "upgrade the controllers first" in agent_skew("0.2.0", "0.3.0")
    assert "more than one minor version behind the controller (0.4.1)" in agent_skew(
        "0.4.1", "0.2.0"
    )


def test_controller_skew() -> None:
    assert controller_skew(["0.2.0", "0.2.1"]) == ""
    assert "a rolling upgrade" in controller_skew(["0.2.0", "0.3.0", "0.3.0"])
    assert controller_skew(["0.1.0", "0.3.0"]).startswith("unsupported")
    assert minor_of("v1.12.0rc1") == (1, 12) and minor_of("garbage") is None


def test_version_lists_every_daemon_and_node_ls_its_version(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    cluster.start_controller()
    cluster.start_agent("v1")
    cluster.wait_for(
        lambda: [n["status"]["state"] for n in cluster.nodes().values()] == ["READY"],
        "the node READY",
    )
    data = json.loads(cluster.cli("version", "-o", "json").stdout)
    (server,) = data["servers"]
    kinds = [(d["kind"], d["skew"]) for d in server["cluster"]]
    assert kinds == [("controller", ""), ("agent", "")]
    assert server["cluster"][1]["name"] == "v1"
    assert server["cluster"][1]["version"] == server["version"]
    table = cluster.cli("version").stdout
    assert "Cluster daemons:" in table and "KIND" in table and "SKEW" in table
    listing = cluster.cli("node", "ls").stdout
    assert server["version"] in listing and "skew" not in listing
