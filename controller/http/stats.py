"""Container stats from the agents, on demand: `/v1/nodes/ID/stats`,
`/v1/services/NAME/stats` and `/v1/stats` (the whole cluster, by service).

Nothing is kept: each request asks the nodes concerned, at most `MAX_NODES_AT_ONCE` at a
time, each within `NODE_TIMEOUT` seconds, over the agents' own API (Containers.List, then
Containers.Stats per running container) with this controller's certificate. A node that
is down, unreachable or slow is listed with its error; the others' answers stand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from dockyard.common.pki import NODE, role_host
from dockyard.controller.image_sources import reachable_api_address
from dockyard.v1 import containers_pb2_grpc
from dockyard.v1.containers_pb2 import ContainerRecord, ContainerRef, ListContainersRequest
from dockyard.v1.types_pb2 import Node, NodeStatus

__all__ = [
    "MAX_NODES_AT_ONCE",
    "NODE_TIMEOUT",
    "AgentStats",
    "NodeStats",
    "service_totals",
    "totals",
]

log = structlog.get_logger(__name__)

NODE_TIMEOUT = 3.0
"""Seconds one node has to answer (list and every container's sample)."""
MAX_NODES_AT_ONCE = 32
MAX_CONTAINERS_AT_ONCE = 16
"""Containers.Stats calls in flight per node."""
LABEL_SERVICE_ID = "dockyard.service.id"  # as the agent labels task containers
LABEL_SERVICE_NAME = "dockyard.service.name"
LABEL_TASK_ID = "dockyard.task.id"
LABEL_SLOT = "dockyard.slot"
AGENT_TLS_NAME = role_host(NODE)
"""What an agent's certificate is checked for (the name every node certificate carries)."""

Credentials = Callable[[], grpc.ChannelCredentials | None]


@dataclass
class NodeStats:
    """One node's answer: its containers' samples, or why there are none."""

    node_id: str
    node: str
    containers: list[dict[str, Any]]
    error: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "node": self.node,
            "error": self.error,
            "containers": self.containers,
        }


def _container(record: ContainerRecord, stats: Any, node: Node) -> dict[str, Any]:
    labels = record.config.labels
    return {
        "id": record.id,
        "name": record.name,
        "image": record.image,
        "service_id": labels.get(LABEL_SERVICE_ID, ""),
        "service": labels.get(LABEL_SERVICE_NAME, ""),
        "task_id": labels.get(LABEL_TASK_ID, ""),
        "slot": labels.get(LABEL_SLOT, ""),
        "node_id": node.id,
        "node": node.spec.name,
        "read_at": stats.read_at.ToJsonString(),
        "cpu_percent": round(stats.cpu_percent, 3),
        "cpu_usage_ns": stats.cpu_usage_ns,
        "memory_usage": stats.memory_usage,
        "memory_limit": stats.memory_limit,
        "pids": stats.pids,
    }


def _first_line(text: str, limit: int = 200) -> str:
    return text.splitlines()[0][:limit] if text else ""


class AgentStats:
    """Asks agents for their containers' stats.

    Args:
        credentials: This controller's client credentials (its certificate), read at each
            request; None for plaintext (--insecure).
        timeout: Seconds each node has.
    """

    def __init__(self, credentials: Credentials, timeout: float = NODE_TIMEOUT) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._nodes = asyncio.Semaphore(MAX_NODES_AT_ONCE)

    def _channel(self, address: str) -> grpc.aio.Channel:
        credentials = self._credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address)
        options = [("grpc.ssl_target_name_override", AGENT_TLS_NAME)]
        return grpc.aio.secure_channel(address, credentials, options)

    async def nodes(
        self,
        nodes: Iterable[Node],
        wanted: Callable[[ContainerRecord], bool] = lambda r: True,
    ) -> list[NodeStats]:
        """Every node's answer, in the order given, with the containers `wanted` keeps."""
        async with asyncio.TaskGroup() as group:
            asked = [group.create_task(self.node(n, wanted)) for n in nodes]
        return [task.result() for task in asked]

    async def node(
        self, node: Node, wanted: Callable[[ContainerRecord], bool] = lambda r: True
    ) -> NodeStats:
        """One node's running containers that `wanted` keeps, with a sample each."""
        answer = NodeStats(node.id, node.spec.name, [])
        address = reachable_api_address(node)
        if node.status.state == NodeStatus.DOWN:
            answer.error = "node is down"
        elif not address:
            answer.error = "node has no reachable API address"
        if answer.error:
            return answer
        async with self._nodes:
            try:
                async with asyncio.timeout(self._timeout):
                    answer.containers = await self._ask(node, address, wanted)
            except TimeoutError:
                answer.error = f"no answer within {self._timeout:g} s"
            except grpc.aio.AioRpcError as exc:
                answer.error = f"{exc.code().name}: {_first_line(exc.details() or '')}"
        if answer.error:
            log.info("stats.node_failed", node=node.spec.name, error=answer.error)
        return answer

    async def _ask(
        self, node: Node, address: str, wanted: Callable[[ContainerRecord], bool]
    ) -> list[dict[str, Any]]:
        async with self._channel(address) as channel:
            stub = containers_pb2_grpc.ContainersStub(channel)
            listed = await stub.List(ListContainersRequest())
            records = [r for r in listed.containers if r.state.status == "running" and wanted(r)]
            limit = asyncio.Semaphore(MAX_CONTAINERS_AT_ONCE)

            async def sample(record: ContainerRecord) -> dict[str, Any] | None:
                async with limit:
                    try:
                        stats = await stub.Stats(ContainerRef(container=record.id))
                    except grpc.aio.AioRpcError as exc:  # it exited since the list
                        if exc.code() in (
                            grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.FAILED_PRECONDITION,
                        ):
                            return None
                        raise
                return _container(record, stats, node)

            async with asyncio.TaskGroup() as group:
                samples = [group.create_task(sample(r)) for r in records]
        found = [c for c in (s.result() for s in samples) if c is not None]
        return sorted(found, key=lambda c: c["name"])


def totals(service: str, containers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`containers` counted, and their CPU percent, memory and PIDs summed."""
    found = list(containers)
    return {
        "service": service,
        "containers": len(found),
        "cpu_percent": round(sum(c["cpu_percent"] for c in found), 3),
        "memory_usage": sum(c["memory_usage"] for c in found),
        "pids": sum(c["pids"] for c in found),
    }


def service_totals(containers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`totals` per service name ("": containers that are no service's task), by name."""
    names = sorted({c["service"] for c in containers})
    return [totals(name, (c for c in containers if c["service"] == name)) for name in names]
