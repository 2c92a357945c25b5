"""The reader process behind `--read-listen` (controller/reader.py): a process of its own
with its own etcd watch, serving the list reads; the controller restarts it when it
dies, and it never outlives the controller. A real controller process on a real etcd
(insecure; the TLS roles are tests/security/test_read_port_roles.py's)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.reader_supervisor import ReaderProcess, setup_for
from dockyard.controller.revision_cell import RevisionCell
from dockyard.controller.store import NODES, Store
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import CreateServiceRequest, ListNodesRequest, ListServicesRequest
from dockyard.v1.workloads_pb2 import ServiceSpec
from tests.conftest import Cluster, LoopThread
from tests.orchestrators.helpers import node
from tests.ports import free_port
from tests.test_http_api import Reply, fetch

PREFIX = "/readerproc"
READER = "dockyard.controller.reader"


@dataclass
class Reading:
    cluster: Cluster
    etcd: EtcdServer
    loop: LoopThread
    store: Store  # another writer on the same etcd (not through the controller)
    read_address: str
    read_http: str  # the reader's HTTP port's URL (--read-http-listen)

    def reads(self) -> Any:
        return control_pb2_grpc.ControlStub(grpc.insecure_channel(self.read_address))

    def http(self) -> str:
        """The controller's own HTTP API's URL (--http-listen)."""
        return f"http://127.0.0.1:{self.cluster.http_port}"

    def reader_pid(self) -> int | None:
        assert self.cluster.controller is not None and self.cluster.controller.process
        return _reader_of(self.cluster.controller.process.pid)


def _reader_of(controller: int) -> int | None:
    """The controller's live reader process, if any."""
    try:
        for child in psutil.Process(controller).children():
            if READER in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                return child.pid
    except psutil.NoSuchProcess:
        pass
    return None


def _events(log: str, event: str, process: str) -> int:
    """How many JSON log lines name `event`, logged by `process`."""
    count = 0
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            count += record.get("process", "controller") == process
    return count


@pytest.fixture(scope="module")
def reading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reading]:
    root = tmp_path_factory.mktemp("reader")
    loop = LoopThread()
    etcd = EtcdServer(root / "etcd", log_path=root / "etcd.log")
    loop.run(etcd.start())
    store = Store([etcd.endpoint], PREFIX)
    cluster = Cluster(root / "cluster", insecure=True, etcd_endpoints=[etcd.endpoint])
    cluster.root.mkdir(parents=True)
    read_address = f"127.0.0.1:{free_port()}"
    read_http = f"127.0.0.1:{free_port()}"
    try:
        loop.run(store.connect())
        cluster.start_controller(
            [
                "--read-listen",
                read_address,
                "--read-http-listen",
                read_http,
                "--etcd-prefix",
                PREFIX,
            ]
        )
        yield Reading(cluster, etcd, loop, store, read_address, f"http://{read_http}")
    finally:
        cluster.stop()
        loop.run(store.close())
        loop.run(etcd.stop())
        loop.close()


@dataclass
class Alone:
    """A reader process started by the test (no controller: its own-write revision
    stays 0, so every answer is its view's, never an etcd read), its stderr in `log`."""

    process: ReaderProcess
    read_address: str
    log: Path

    def reads(self) -> Any:
        return control_pb2_grpc.ControlStub(grpc.insecure_channel(self.read_address))

    def events(self, event: str) -> int:
        return _events(self.log.read_text(errors="replace"), event, "reader")


@pytest.fixture(scope="module")
def alone(reading: Reading, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alone]:
    log = tmp_path_factory.mktemp("alone") / "reader.log"
    cell = RevisionCell.create()
    setup = setup_for(
        "127.0.0.1:0", [reading.etcd.endpoint], PREFIX, {}, None, 10.0, None, cell, "info"
    )
    process = ReaderProcess(setup, cell)
    with open(log, "ab") as stderr, _stderr_to(stderr.fileno()):
        port = reading.loop.run(process.start())
    try:
        yield Alone(process, f"127.0.0.1:{port}", log)
    finally:
        reading.loop.run(process.stop())
        cell.close()


@contextlib.contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """This process's fd 2 is `fd` while a child is started (it inherits it)."""
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _answers(stub: Any) -> bool:
    try:
        stub.ListNodes(ListNodesRequest(), timeout=5)
        return True
    except grpc.RpcError:
        return False


def _service_ids(stub: Any) -> list[str]:
    return [s.service.id for s in stub.ListServices(ListServicesRequest(), timeout=10).services]


def _node_ids(stub: Any) -> set[str]:
    return {n.id for n in stub.ListNodes(ListNodesRequest(), timeout=10).nodes}


def _create(control: Any, name: str) -> str:
    spec = ServiceSpec(name=name)
    spec.task.container.image = "busybox"
    spec.replicated.replicas = 1
    created = control.CreateService(CreateServiceRequest(spec=spec), timeout=10)
    return str(created.id)


def test_a_process_of_its_own_serves_reads_and_sees_my_writes(reading: Reading) -> None:
    reader = reading.reader_pid()
    assert reader is not None
    assert reading.cluster.controller is not None and reading.cluster.controller.process
    assert reader != reading.cluster.controller.process.pid
    reads, control = reading.reads(), reading.cluster.control()
    try:
        reading.cluster.wait_for(lambda: _answers(reads), "the read port to answer")
        for index in range(5):  # each read right after its write, through this controller
            created = _create(control, f"mine{index}")
            assert created in _service_ids(reads)
    finally:
        control.close()


def _get(url: str) -> Reply:
    return fetch(url, timeout=10)


def _http_ok(url: str) -> bool:
    try:
        return _get(url).status == 200
    except OSError:
        return False


def _same(one: str, other: str) -> bool:
    return _get(one).body == _get(other).body


def _pages(url: str, size: int) -> list[list[Any]]:
    """Every page of a paged list, following X-Next-Page-Token."""
    pages, token = [], ""
    while True:
        query = f"?page_size={size}" + (f"&page_token={urllib.parse.quote(token)}" if token else "")
        reply = _get(url + query)
        assert reply.status == 200, reply.body[:300]
        pages.append(reply.json())
        token = reply.headers.get("X-Next-Page-Token") or ""
        if not token:
            return pages


def test_the_reader_serves_the_http_json_reads_as_the_http_api_does(reading: Reading) -> None:
    """GET /v1/nodes and /v1/services on the reader's HTTP port (--read-http-listen):
    the same JSON, in the same order, the same pages and headers as --http-listen."""
    control = reading.cluster.control()
    try:
        for index in range(5):
            name = f"http{index}"
            reading.loop.run(reading.store.create(NODES, name, node(name)))
            _create(control, f"httpsvc{index}")
    finally:
        control.close()
    ours, theirs = reading.read_http, reading.http()
    reading.cluster.wait_for(lambda: _http_ok(ours + "/v1/nodes"), "the HTTP reads to answer")
    for path in ("/v1/nodes", "/v1/services", "/v1/nodes?name=http3", "/v1/services?mode=job"):
        reading.cluster.wait_for(
            functools.partial(_same, ours + path, theirs + path),
            f"{path} on the reader's HTTP port to equal the HTTP API's",
        )
        reply = _get(ours + path)
        assert reply.headers["Content-Type"].startswith("application/json")
    assert len(_get(ours + "/v1/services").json()) >= 5
    for path in ("/v1/nodes", "/v1/services"):
        pages = _pages(ours + path, 2)
        assert pages == _pages(theirs + path, 2)
        assert len(pages) >= 3 and all(len(page) <= 2 for page in pages)
        whole = _get(ours + path).json()
        assert sorted(json.dumps(r) for page in pages for r in page) == sorted(
            json.dumps(r) for r in whole
        )
    bad = _get(ours + "/v1/nodes?state=sleepy")
    assert bad.status == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
    assert bad.json() == _get(theirs + "/v1/nodes?state=sleepy").json()
    assert _get(ours + "/v1/tasks").status == 404  # nodes and services only


def test_the_reader_follows_writes_made_elsewhere(reading: Reading, alone: Alone) -> None:
    reads = alone.reads()
    reading.cluster.wait_for(lambda: _answers(reads), "the read port to answer")
    reading.loop.run(reading.store.create(NODES, "elsewhere1", node("elsewhere1")))
    reading.cluster.wait_for(
        lambda: "elsewhere1" in _node_ids(reads), "the reader to see another client's write"
    )
    reading.loop.run(reading.store.delete(NODES, "elsewhere1"))
    reading.cluster.wait_for(
        lambda: "elsewhere1" not in _node_ids(reads), "the reader to see the delete"
    )


def test_a_killed_reader_is_restarted_on_the_same_port(reading: Reading) -> None:
    reads = reading.reads()
    reading.cluster.wait_for(lambda: _answers(reads), "the read port to answer")
    before = set(_service_ids(reads))
    first = reading.reader_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    reading.cluster.wait_for(
        lambda: reading.reader_pid() not in (None, first), "a new reader process", 30
    )
    reading.cluster.wait_for(lambda: _answers(reads), "the restarted reader to answer", 30)
    assert set(_service_ids(reads)) == before
    # Its HTTP port too, on the same port.
    reading.cluster.wait_for(
        lambda: _http_ok(reading.read_http + "/v1/services"), "the HTTP reads to answer", 30
    )
    assert {s["service"]["id"] for s in _get(reading.read_http + "/v1/services").json()} == before
    assert reading.cluster.controller is not None and reading.cluster.controller.process
    assert reading.cluster.controller.process.poll() is None
    assert _events(reading.cluster.controller.log(), "reader.exited", "controller") >= 1


def test_a_reader_behind_a_compaction_lists_again(reading: Reading, alone: Alone) -> None:
    """A reader whose watch fell behind what etcd compacted away lists everything again
    (and misses neither a create nor a delete made meanwhile)."""
    reads = alone.reads()
    reading.cluster.wait_for(lambda: _answers(reads), "the read port to answer")
    reading.loop.run(reading.store.create(NODES, "doomed", node("doomed")))
    reading.cluster.wait_for(lambda: "doomed" in _node_ids(reads), "the reader to see it")
    pid = alone.process.pid
    assert pid is not None
    relists = alone.events("state.relist")
    os.kill(pid, signal.SIGSTOP)  # it cannot read while etcd restarts: its watch breaks
    try:
        reading.loop.run(reading.etcd.stop())
        reading.loop.run(reading.etcd.start())
        reading.loop.run(_write_and_compact(reading.store))
    finally:
        os.kill(pid, signal.SIGCONT)
    reading.cluster.wait_for(
        lambda: (ids := _node_ids(reads)) >= {"born"} and "doomed" not in ids,
        "the reader to list again after the compaction",
        60,
    )
    reading.cluster.wait_for(
        lambda: alone.events("state.relist") > relists, "the reader's relist in its log"
    )
    assert alone.process.pid == pid  # the same process, not a restart


async def _write_and_compact(store: Store) -> None:
    """A delete and a create the reader has not seen, then compact them away."""
    assert store._client.kv is not None
    await store.delete(NODES, "doomed")
    await store.create(NODES, "born", node("born"))
    _, revision = await store.list_all(NODES)
    await store._client.kv.compact(revision)


def _controller_serving_reads(
    cluster_factory: Callable[..., Cluster], reading: Reading, prefix: str
) -> tuple[Cluster, subprocess.Popen[bytes], int]:
    """A controller with a read port (on an etcd of its own, not an embedded one, which
    would die with it too), once its reader serves: the cluster, the controller's
    process and the reader's pid."""
    cluster = cluster_factory(insecure=True, etcd_endpoints=[reading.etcd.endpoint])
    read_address = f"127.0.0.1:{free_port()}"
    cluster.start_controller(["--read-listen", read_address, "--etcd-prefix", prefix])
    assert cluster.controller is not None and cluster.controller.process is not None
    reads = control_pb2_grpc.ControlStub(grpc.insecure_channel(read_address))
    cluster.wait_for(lambda: _answers(reads), "the reader to serve")
    reader = _reader_of(cluster.controller.process.pid)
    assert reader is not None
    return cluster, cluster.controller.process, reader


def test_the_reader_dies_with_its_controller(
    cluster_factory: Callable[..., Cluster], reading: Reading
) -> None:
    cluster, controller, reader = _controller_serving_reads(cluster_factory, reading, "/readerdies")
    try:
        os.kill(controller.pid, signal.SIGKILL)  # only the controller: not its process group
        controller.wait(15)
        cluster.wait_for(lambda: not _alive(reader), "the reader to die with the controller")
    finally:
        if _alive(reader):
            os.kill(reader, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_reader_stops_with_a_stopped_controller(
    cluster_factory: Callable[..., Cluster], reading: Reading
) -> None:
    cluster, controller, reader = _controller_serving_reads(
        cluster_factory, reading, "/readerstops"
    )
    os.kill(controller.pid, signal.SIGTERM)
    controller.wait(15)
    assert not _alive(reader), "the reader outlived a controller that stopped"
    # It was told, and stopped in order (not killed with the controller).
    assert cluster.controller is not None
    assert _events(cluster.controller.log(), "reader.stopped", "reader") == 1


def test_the_shared_revision_only_moves_forward_and_is_seen_through_its_fd() -> None:
    cell = RevisionCell.create()
    seen = RevisionCell.attach(os.dup(cell.fd))
    try:
        assert seen.get() == 0
        cell.set(41)
        cell.set(7)  # an older commit's revision, reported late
        assert seen.get() == 41
    finally:
        seen.close()
        cell.close()
