"""HTTP side benchmark: /metrics scrape time, /v1/tasks, SSE fan-out to N clients.

    python tests/bench/bench_http.py [--nodes 50] [--replicas 2000] [--clients 50]

Starts a controller (--insecure, embedded etcd) and one `dockyard-agent hollow`
process; scales a service up with no event stream open, then again with N
streams open (plus one client that never reads), and reports controller CPU for
both runs, events per client, the fan-out spread of the last event, /metrics and
/v1/tasks latency, RSS, and the dropped-stream counter. Cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetServiceRequest,
    ListNodesRequest,
    ListTasksRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import NodeStatus, TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import spawn, stop_process

BIN = Path(sys.executable).parent
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait(predicate, what: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with OPENER.open(url, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - start, body


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Reader:
    def __init__(self) -> None:
        self.count = 0
        self.last_id = ""
        self.last_at = 0.0


async def read_stream(
    session: aiohttp.ClientSession, url: str, reader: Reader, stop_event: asyncio.Event
) -> None:
    """Count frames cheaply (chunks, not lines): the bench must not be the bottleneck."""
    async with session.get(url) as response:
        assert response.status == 200, response.status
        tail = b""
        async for chunk in response.content.iter_any():
            data = tail + chunk
            reader.count += data.count(b"\nevent: ")
            tail = data[-8:]
            reader.last_at = time.monotonic()
            if stop_event.is_set():
                return


def scale(control, name: str, replicas: int) -> None:
    service = control.GetService(GetServiceRequest(service=name))
    service.spec.replicated.replicas = replicas
    control.UpdateService(
        UpdateServiceRequest(service=name, version=service.meta.version, spec=service.spec)
    )


def running(control, name: str) -> int:
    tasks = control.ListTasks(ListTasksRequest(services=[name])).tasks
    return sum(1 for t in tasks if t.status.state == TaskStatus.RUNNING)


def start_cluster(
    root: Path, nodes: int, grpc_port: int, http_port: int, procs: list[subprocess.Popen[bytes]]
) -> Any:
    """An insecure controller and a hollow fleet, all READY; a Control stub."""
    url = f"http://127.0.0.1:{http_port}"
    procs.append(
        spawn(
            [
                str(BIN / "dockyard-controller"),
                "run",
                "--insecure",
                "--state-dir",
                str(root / "c"),
                "--listen",
                f"127.0.0.1:{grpc_port}",
                "--http-listen",
                f"127.0.0.1:{http_port}",
                "--http-max-streams",
                "1000",
                "--resolve-image",
                "never",
                "--log-level",
                "info",
            ],
            root / "c.log",
        )
    )
    wait(lambda: _ok(url + "/healthz"), "controller", 30)
    procs.append(
        spawn(
            [
                str(BIN / "dockyard-agent"),
                "hollow",
                "--controller",
                f"127.0.0.1:{grpc_port}",
                "--count",
                str(nodes),
                "--state-dir",
                str(root / "h"),
                "--stagger",
                "0.005",
                "--log-level",
                "warning",
            ],
            root / "h.log",
        )
    )
    control = control_pb2_grpc.ControlStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
    wait(
        lambda: (
            sum(
                1
                for n in control.ListNodes(ListNodesRequest()).nodes
                if n.status.state == NodeStatus.READY
            )
            == nodes
        ),
        "nodes",
        120,
    )
    spec = ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "3600"])
    spec.replicated.replicas = 0
    control.CreateService(CreateServiceRequest(spec=spec))
    return control


def baseline(control: Any, proc: psutil.Process, replicas: int) -> tuple[float, float]:
    """Scale up with no stream open: (seconds to RUNNING, controller CPU seconds)."""
    cpu0 = sum(proc.cpu_times()[:2])
    scale(control, "web", replicas)
    up = wait(lambda: running(control, "web") == replicas, "up", 300)
    cpu1 = sum(proc.cpu_times()[:2])
    scale(control, "web", 0)
    wait(lambda: running(control, "web") == 0, "down", 300)
    time.sleep(2)
    return up, cpu1 - cpu0


async def settle_readers(readers: list[Reader]) -> list[int]:
    """Wait until every client has the same count and nothing arrived for 2 s."""
    started = time.monotonic()
    while time.monotonic() - started < 120:
        counts = [r.count for r in readers]
        if len(set(counts)) == 1 and time.monotonic() - max(r.last_at for r in readers) > 2:
            return counts
        await asyncio.sleep(0.2)
    return [r.count for r in readers]


async def with_streams(
    control: Any, proc: psutil.Process, url: str, http_port: int, args: argparse.Namespace
) -> tuple[float, float]:
    """The same scale-up with `clients` streams open (and one that never reads)."""
    stop_event = asyncio.Event()
    readers = [Reader() for _ in range(args.clients)]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        tasks = [
            asyncio.create_task(read_stream(session, url + "/v1/events", r, stop_event))
            for r in readers
        ]
        lazy = socket.create_connection(("127.0.0.1", http_port))  # must be dropped
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(1)
        rss_before, cpu_a = proc.memory_info().rss, sum(proc.cpu_times()[:2])
        start = time.monotonic()
        scale(control, "web", args.replicas)
        await asyncio.to_thread(wait, lambda: running(control, "web") == args.replicas, "up", 300)
        up, cpu = time.monotonic() - start, sum(proc.cpu_times()[:2]) - cpu_a
        counts = await settle_readers(readers)
        last = [r.last_at for r in readers]
        print(
            f"{args.clients} streams: every event to every client {max(last) - start:.1f} s "
            f"after the scale-up; events per client {min(counts) - 1}..{max(counts) - 1}; "
            f"last event spread {(max(last) - min(last)) * 1000:.0f} ms; RSS "
            f"{rss_before / 2**20:.0f} -> {proc.memory_info().rss / 2**20:.0f} MiB"
        )
        await asyncio.sleep(12)  # the lazy client's write times out (10 s)
        for line in get(url + "/metrics")[1].decode().splitlines():
            if line.startswith(("dockyard_event_streams", "process_resident")):
                print("  " + line)
        stop_event.set()
        lazy.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return up, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    grpc_port, http_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        control = start_cluster(root, args.nodes, grpc_port, http_port, procs)
        proc = psutil.Process(procs[0].pid)
        up0, cpu0 = baseline(control, proc, args.replicas)
        up1, cpu1 = asyncio.run(with_streams(control, proc, url, http_port, args))
        print(
            f"{args.replicas} replicas RUNNING: {up1:.1f} s with {args.clients} streams "
            f"against {up0:.1f} s with none ({up1 / up0:.2f}x); controller CPU {cpu1:.1f} s "
            f"against {cpu0:.1f} s ({cpu1 / max(cpu0, 0.01):.2f}x)"
        )
        scrapes = [get(url + "/metrics")[0] for _ in range(20)]
        print(
            f"/metrics ({args.replicas} tasks, {args.nodes} nodes): p50 "
            f"{statistics.median(scrapes) * 1000:.1f} ms, p95 {pct(scrapes, 0.95) * 1000:.1f} ms"
        )
        lists = [get(url + "/v1/tasks?history=1") for _ in range(5)]
        print(
            f"/v1/tasks?history=1 ({len(lists[0][1]) / 2**20:.1f} MiB): p50 "
            f"{statistics.median(t for t, _ in lists) * 1000:.0f} ms"
        )
    finally:
        for process in reversed(procs):
            stop_process(process, 30)
        shutil.rmtree(root, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        return get(url)[0] >= 0
    except OSError:
        return False


if __name__ == "__main__":
    main()
