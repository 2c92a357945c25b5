"""`node ls`'s table: headers, --format names, one row per node.

Free of click and grpc: the full CLI and the fast path (`cli/fast.py`) print it with
the same code.
"""

from __future__ import annotations

from typing import Any

NODE_HEADERS = [
    "ID",
    "NAME",
    "STATUS",
    "AVAILABILITY",
    "CPUS",
    "MEMORY",
    "LABELS",
    "SUBNET",
    "RUNTIME",
    "VERSION",
    "LAST HEARTBEAT",
]
NODE_FIELDS = [
    "ID",
    "Hostname",
    "Status",
    "Availability",
    "CPUs",
    "Memory",
    "Labels",
    "Subnet",
    "Runtime",
    "EngineVersion",
    "LastHeartbeat",
]


def node_row(n: Any, controller_version: str, no_trunc: bool = False) -> list[str]:
    from dockyard.common.skew import agent_skew, short
    from dockyard.common.timestamps import human_age
    from dockyard.v1.types_pb2 import NodeSpec, NodeStatus

    labels = ",".join(f"{k}={v}" if v else k for k, v in sorted(n.spec.labels.items()))
    resources = n.description.resources
    return [
        n.id if no_trunc else n.id[:12],
        n.spec.name,
        NodeStatus.State.Name(n.status.state),
        NodeSpec.Availability.Name(n.spec.availability).lower(),
        f"{resources.nano_cpus / 1e9:g}",
        f"{resources.memory_bytes / 1024**3:.1f}GiB",
        labels or "-",
        n.network.subnet or "-",
        n.description.runtime,
        _version_cell(
            n.description.agent_version,
            short(agent_skew(controller_version, n.description.agent_version)),
        ),
        human_age(n.status.last_heartbeat),
    ]


def _version_cell(version: str, skew: str) -> str:
    return f"{version} (skew: {skew})" if skew else version
