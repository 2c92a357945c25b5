"""The controller's stats client against scripted agents (real grpc.aio servers): a slow
node costs its timeout and says so, a down node is not dialled, the others answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from dockyard.controller.http.stats import AgentStats, service_totals
from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import containers_pb2_grpc
from dockyard.v1.types_pb2 import Node, NodeStatus
from tests.ports import free_port


class Answering(containers_pb2_grpc.ContainersServicer):
    """Two running containers (one a task of `web`, one gone by its sample) and an exited one."""

    async def List(self, request: Any, context: Any) -> cpb.ListContainersResponse:
        web = cpb.ContainerRecord(id="c1", name="web.1.x", image="busybox")
        web.state.status = "running"
        web.config.labels.update(
            {
                "dockyard.service.name": "web",
                "dockyard.service.id": "s1",
                "dockyard.task.id": "t1",
                "dockyard.slot": "1",
            }
        )
        gone = cpb.ContainerRecord(id="c2", name="gone")
        gone.state.status = "running"
        done = cpb.ContainerRecord(id="c3", name="done")
        done.state.status = "exited"
        return cpb.ListContainersResponse(containers=[web, gone, done])

    async def Stats(self, request: Any, context: Any) -> cpb.ContainerStats:
        if request.container == "c2":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such container")
        return cpb.ContainerStats(
            cpu_usage_ns=5, cpu_percent=12.5, memory_usage=1000, memory_limit=4000, pids=2
        )


class Hanging(containers_pb2_grpc.ContainersServicer):
    async def List(self, request: Any, context: Any) -> cpb.ListContainersResponse:
        await asyncio.sleep(60)
        return cpb.ListContainersResponse()


@pytest.fixture
async def agents() -> AsyncIterator[dict[str, str]]:
    servers, addresses = [], {}
    for name, servicer in (("fast", Answering()), ("slow", Hanging())):
        server = grpc.aio.server()
        containers_pb2_grpc.add_ContainersServicer_to_server(servicer, server)
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        servers.append(server)
        addresses[name] = address
    yield addresses
    for server in servers:
        await server.stop(None)


def node(node_id: str, address: str, state: NodeStatus.State.ValueType = NodeStatus.READY) -> Node:
    made = Node(id=node_id)
    made.spec.name = node_id
    made.status.state = state
    made.description.api_address = address
    return made


async def test_each_node_answers_or_says_why(agents: dict[str, str]) -> None:
    stats = AgentStats(lambda: None, timeout=0.5)
    answers = await stats.nodes(
        [
            node("fast", agents["fast"]),
            node("slow", agents["slow"]),
            node("down", f"127.0.0.1:{free_port()}", NodeStatus.DOWN),
            node("none", ""),
        ]
    )
    errors = {a.node: a.error for a in answers}
    assert errors == {
        "fast": "",
        "slow": "no answer within 0.5 s",
        "down": "node is down",
        "none": "node has no reachable API address",
    }
    (container,) = answers[0].containers  # the exited one is not asked, the gone one left out
    assert container["id"] == "c1" and container["service"] == "web"
    assert container["task_id"] == "t1" and container["slot"] == "1"
    assert (container["cpu_percent"], container["memory_usage"], container["pids"]) == (
        12.5,
        1000,
        2,
    )
    assert service_totals(answers[0].containers) == [
        {"service": "web", "containers": 1, "cpu_percent": 12.5, "memory_usage": 1000, "pids": 2}
    ]


async def test_a_filter_keeps_only_the_wanted_containers(agents: dict[str, str]) -> None:
    stats = AgentStats(lambda: None)
    answer = await stats.node(
        node("fast", agents["fast"]), lambda r: r.config.labels.get("dockyard.service.id") == "s2"
    )
    assert answer.error == "" and answer.containers == []
