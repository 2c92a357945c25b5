"""Prometheus HTTP service discovery of the agents' `/metrics`: `GET /v1/sd/agents`.

Prometheus' `http_sd_configs` reads a list of target groups. Each node is one group: its
agent's host (as other hosts reach it, see `image_sources.reachable_api_address`) with the
metrics port (`?port=`, 7403 by default: `dockyard-agent run --metrics-listen`), and
`__meta_dockyard_*` labels to keep or relabel. Down nodes are listed too (their scrape
then fails, which is what an alert wants); drop them with a relabel on the state."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dockyard.common.addresses import AGENT_METRICS_PORT, split_host_port
from dockyard.controller.image_sources import reachable_api_address
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus

__all__ = ["agent_targets", "parse_port"]


def parse_port(text: str) -> int:
    """The `port` query value; ValueError naming what is wrong."""
    if not text:
        return AGENT_METRICS_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port: expected a number in 1-65535, got {text[:16]!r}")
    return int(text)


def agent_targets(nodes: Iterable[Node], port: int) -> list[dict[str, Any]]:
    """One target group per node that has a reachable API address, by node name."""
    groups = []
    for node in sorted(nodes, key=lambda n: n.spec.name):
        address = reachable_api_address(node)
        if not address:
            continue
        host, _ = split_host_port(address, 0)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        labels = {
            "__meta_dockyard_node_id": node.id,
            "__meta_dockyard_node_name": node.spec.name,
            "__meta_dockyard_node_state": NodeStatus.State.Name(node.status.state),
            "__meta_dockyard_node_availability": NodeSpec.Availability.Name(node.spec.availability),
            "__meta_dockyard_node_runtime": node.description.runtime,
        }
        for key, value in node.spec.labels.items():
            safe = "".join(c if c.isalnum() else "_" for c in key)
            labels[f"__meta_dockyard_node_label_{safe}"] = value
        groups.append({"targets": [target], "labels": labels})
    return groups
