"""The read port (`--read-listen`): list reads answered from a view's published
snapshot on threads of their own (the controller's reader process); a read after this
controller's own write sees it; pages. One controller runs in this process against a
real etcd (insecure), its reader process beside it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.common.etcd_server import EtcdServer, free_port
from dockyard.controller.config import ControllerConfig
from dockyard.controller.read_server import ReadServer
from dockyard.controller.server import Controller
from dockyard.controller.snapshot import ReadSnapshot, SnapshotBoard
from dockyard.controller.store import NODES, SERVICES, Kind
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    ListNodesRequest,
    ListNodesResponse,
    ListServicesRequest,
    ListServicesResponse,
)
from tests.orchestrators.helpers import node, service
from tests.polling import wait_until


@pytest.fixture
async def controller(etcd: EtcdServer, tmp_path: Path) -> AsyncIterator[Controller]:
    config = ControllerConfig(
        state_dir=tmp_path / "controller",
        listen="127.0.0.1:0",
        etcd_endpoints=[etcd.endpoint],
        etcd_prefix="/reads",
        insecure=True,
        http_listen=f"127.0.0.1:{free_port()}",
        read_listen="127.0.0.1:0",
    )
    controller = Controller(config)
    await controller.start()
    try:
        await wait_until(lambda: controller.state is not None, "the controller to lead")
        yield controller
    finally:
        await controller.stop(grace=0.5)


@pytest.fixture
def reads(controller: Controller) -> Iterator[Any]:
    """A blocking Control stub on the read port (called from a thread: the controller
    runs on this test's event loop)."""
    with grpc.insecure_channel(f"127.0.0.1:{controller.read_port}") as channel:
        yield control_pb2_grpc.ControlStub(channel)


async def _services(reads: Any, **fields: Any) -> ListServicesResponse:
    response: ListServicesResponse = await asyncio.to_thread(
        reads.ListServices, ListServicesRequest(**fields), timeout=10
    )
    return response


async def _nodes(reads: Any, **fields: Any) -> ListNodesResponse:
    response: ListNodesResponse = await asyncio.to_thread(
        reads.ListNodes, ListNodesRequest(**fields), timeout=10
    )
    return response


async def test_a_read_after_my_write_sees_it(controller: Controller, reads: Any) -> None:
    assert controller.store is not None
    web = service(replicas=2)
    web.id = "svc0mine"
    await controller.store.create(SERVICES, web.id, web)
    listed = await _services(reads)
    assert [s.service.id for s in listed.services] == ["svc0mine"]
    assert listed.services[0].desired == 2
    await controller.store.create(NODES, "node0mine", node("node0mine"))
    assert [n.id for n in (await _nodes(reads)).nodes] == ["node0mine"]


def test_a_view_behind_my_write_is_read_from_etcd_instead() -> None:
    """The read port's view lags this controller's own last write (revision 5): the
    nodes and services come from etcd (`records`), the counts from the snapshot."""
    board = SnapshotBoard()
    board.publish(ReadSnapshot.of(1, {}, {}, {"svc0mine": 1}, {}))
    web = service(replicas=2)
    web.id = "svc0mine"

    def records(kind: Kind[Any]) -> tuple[list[Any], int]:
        return ([web], 5) if kind is SERVICES else ([node("node0mine")], 5)

    server = ReadServer(board, lambda: 5, lambda n: n, lambda: None, records=records)
    port = server.start("127.0.0.1:0", None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            listed = stub.ListServices(ListServicesRequest(), timeout=10)
            assert [(s.service.id, s.running) for s in listed.services] == [("svc0mine", 1)]
            assert [n.id for n in stub.ListNodes(ListNodesRequest(), timeout=10).nodes] == [
                "node0mine"
            ]
    finally:
        server.stop(0)


async def test_lists_come_in_pages_on_both_ports(controller: Controller, reads: Any) -> None:
    assert controller.store is not None
    for index in range(5):
        web = service(replicas=1)
        web.id, web.spec.name = f"svc{index}", f"web{index}"
        await controller.store.create(SERVICES, web.id, web)
        await controller.store.create(NODES, f"node{index}", node(f"node{index}"))
    seen: list[str] = []
    token = ""
    while True:
        page = await _services(reads, page_size=2, page_token=token)
        assert len(page.services) <= 2
        seen += [s.service.id for s in page.services]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"svc{i}" for i in range(5)]
    first = await _nodes(reads, page_size=3)
    rest = await _nodes(reads, page_size=3, page_token=first.next_page_token)
    assert [n.id for n in (*first.nodes, *rest.nodes)] == [f"node{i}" for i in range(5)]
    assert rest.next_page_token == ""
    # The main port (the API on the event loop) pages the same snapshot.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}") as channel:
        main = control_pb2_grpc.ControlStub(channel)
        page = await main.ListNodes(ListNodesRequest(page_size=3), timeout=10)
        assert [n.id for n in page.nodes] == [n.id for n in first.nodes]
        assert page.next_page_token == first.next_page_token


def _http_get(url: str) -> tuple[int, Any, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


# The HTTP server keys its request state by strings (controller/http/server.py): aiohttp
# warns, and in this process (not a subprocess, as in test_http_api.py) that would fail.
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_the_http_api_pages_the_same_snapshot(controller: Controller) -> None:
    assert controller.store is not None
    for index in range(3):
        await controller.store.create(NODES, f"node{index}", node(f"node{index}"))
    base = f"http://{controller.config.http_listen}/v1/nodes"
    status, first, headers = await asyncio.to_thread(_http_get, f"{base}?page_size=2")
    assert status == 200 and [n["id"] for n in first] == ["node0", "node1"]
    token = headers["X-Next-Page-Token"]
    status, rest, headers = await asyncio.to_thread(
        _http_get, f"{base}?page_size=2&page_token={token}"
    )
    assert [n["id"] for n in rest] == ["node2"] and "X-Next-Page-Token" not in headers
    status, body, _ = await asyncio.to_thread(_http_get, f"{base}?page_size=lots")
    assert status == 400 and "page_size" in json.dumps(body)


async def test_a_bad_page_is_refused_naming_the_field(reads: Any) -> None:
    for fields, named in (({"page_size": -1}, "page_size"), ({"page_token": "\n"}, "page_token")):
        with pytest.raises(grpc.RpcError) as caught:
            await _nodes(reads, **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        await _services(reads, mode="daemon")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_without_a_view_the_read_port_names_the_leader() -> None:
    server = ReadServer(SnapshotBoard(), lambda: 0, lambda n: n, lambda: "10.0.0.7:4242")
    port = server.start("127.0.0.1:0", None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListNodes(ListNodesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "the leader is at 10.0.0.7:4242" in (caught.value.details() or "")
    finally:
        server.stop(0)
