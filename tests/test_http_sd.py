"""Prometheus HTTP service discovery of the agents (`/v1/sd/agents`): target groups from
node records, as Prometheus' `http_sd_configs` reads them."""

from __future__ import annotations

import pytest

from dockyard.controller.http.sd import agent_targets, parse_port
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus


def node(
    node_id: str,
    name: str,
    api: str,
    observed: str = "",
    state: NodeStatus.State.ValueType = NodeStatus.READY,
) -> Node:
    made = Node(id=node_id)
    made.spec.name = name
    made.spec.availability = NodeSpec.ACTIVE
    made.spec.labels["zone"] = "eu-1"
    made.status.state = state
    made.description.api_address = api
    made.description.runtime = "runc"
    made.network.address = observed
    return made


def test_one_group_per_reachable_node() -> None:
    groups = agent_targets(
        [
            node("b", "n2", "0.0.0.0:7401", observed="10.0.0.2", state=NodeStatus.DOWN),
            node("a", "n1", "10.0.0.1:7401"),
            node("c", "n3", "0.0.0.0:7401"),  # unspecified, and no session address: left out
            node("d", "n4", "[fd00::4]:7401"),
        ],
        7403,
    )
    assert [g["targets"] for g in groups] == [
        ["10.0.0.1:7403"],
        ["10.0.0.2:7403"],
        ["[fd00::4]:7403"],
    ]
    assert groups[1]["labels"] == {
        "__meta_dockyard_node_id": "b",
        "__meta_dockyard_node_name": "n2",
        "__meta_dockyard_node_state": "DOWN",
        "__meta_dockyard_node_availability": "ACTIVE",
        "__meta_dockyard_node_runtime": "runc",
        "__meta_dockyard_node_label_zone": "eu-1",
    }


def test_port_is_checked() -> None:
    assert parse_port("") == 7403 and parse_port("9100") == 9100
    for bad in ("0", "65536", "x", "-1"):
        with pytest.raises(ValueError, match="port"):
            parse_port(bad)


def test_the_shipped_scrape_config_uses_this_endpoint() -> None:
    import urllib.parse
    from pathlib import Path

    import yaml

    from dockyard.common.addresses import AGENT_METRICS_PORT

    config = yaml.safe_load(
        (
            Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "prometheus.yml"
        ).read_text()
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"dockyard-controllers", "dockyard-agents"}
    url = urllib.parse.urlsplit(jobs["dockyard-agents"]["http_sd_configs"][0]["url"])
    assert url.path == "/v1/sd/agents"
    assert parse_port(urllib.parse.parse_qs(url.query)["port"][0]) == AGENT_METRICS_PORT
    kept = {r.get("source_labels", [""])[0] for r in jobs["dockyard-agents"]["relabel_configs"]}
    labels = agent_targets([node("a", "n1", "10.0.0.1:7401")], 7403)[0]["labels"]
    assert kept <= set(labels)  # every relabel reads a label the endpoint gives
    for job in jobs.values():
        assert job["scheme"] == "https" and job["tls_config"]["cert_file"]
