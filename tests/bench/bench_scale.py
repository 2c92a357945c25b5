"""Scale benchmark: N hollow nodes, M tasks (Swarm's 2015 test: 1,000 nodes, 30,000 containers).

    python tests/bench/bench_scale.py [--nodes 1000] [--tasks 30000] [--services 30]

Starts a real controller (embedded etcd) and one `dockyard-agent hollow` process
running N simulated agents, creates the services, and reports: seconds until
every task is placed, stored and reported RUNNING; tasks per second; the
controller's peak RSS; p50/p99 latency of ListServices and ListNodes while it
runs. Cleans up every process and the temp dir, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetInfoRequest,
    ListNodesRequest,
    ListServicesRequest,
)
from dockyard.v1.types_pb2 import NodeStatus
from dockyard.v1.workloads_pb2 import ServiceSpec

BIN = Path(sys.executable).parent


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait(predicate: object, what: str, timeout: float, interval: float = 0.5) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


class Sampler(threading.Thread):
    """Controller RSS and API latencies, sampled while the test runs."""

    def __init__(self, pid: int, stub: control_pb2_grpc.ControlStub) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.stub = stub
        self.peak_rss = 0
        self.latencies: dict[str, list[float]] = {"service ls": [], "node ls": []}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            calls: list[tuple[str, Any]] = [
                ("service ls", lambda: self.stub.ListServices(ListServicesRequest(), timeout=60)),
                ("node ls", lambda: self.stub.ListNodes(ListNodesRequest(), timeout=60)),
            ]
            for name, call in calls:
                start = time.perf_counter()
                call()
                self.latencies[name].append(time.perf_counter() - start)
            self.done.wait(1.0)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def start_cluster(
    root: Path, nodes: int, timeout: float, processes: list[subprocess.Popen[bytes]]
) -> tuple[int, Any]:
    """A controller and a hollow fleet of `nodes` agents, all READY; (pid, stub)."""
    address = f"127.0.0.1:{free_port()}"
    controller = spawn(
        [
            str(BIN / "dockyard-controller"),
            "run",
            "--http-listen",
            "",
            "--listen",
            address,
            "--state-dir",
            str(root / "controller"),
            "--heartbeat-period",
            "5",
            "--log-level",
            "warning",
            "--insecure",
            "--resolve-image",
            "never",  # hollow agents: no registry holds the image
        ],
        root / "controller.log",
    )
    processes.append(controller)
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    )
    stub = control_pb2_grpc.ControlStub(channel)

    def answers() -> bool:
        try:
            stub.ListNodes(ListNodesRequest(), timeout=2)
            return True
        except grpc.RpcError:
            return False

    wait(answers, "the controller", 60)
    processes.append(
        spawn(
            [
                str(BIN / "dockyard-agent"),
                "hollow",
                "--controller",
                address,
                "--count",
                str(nodes),
                "--state-dir",
                str(root / "hollow"),
                "--cpus",
                "64",
                "--memory",
                "256G",
                "--log-level",
                "warning",
            ],
            root / "hollow.log",
        )
    )
    joined = wait(
        lambda: (
            sum(
                n.status.state == NodeStatus.READY
                for n in stub.ListNodes(ListNodesRequest(), timeout=60).nodes
            )
            >= nodes
        ),
        f"{nodes} nodes READY",
        timeout,
    )
    print(f"{nodes} hollow nodes READY after {joined:.1f} s")
    return controller.pid, stub


def create_and_wait(
    stub: Any, services: int, per_service: int, timeout: float
) -> tuple[float, float]:
    """Seconds until every task is placed and stored, and until all run."""
    start = time.monotonic()
    for index in range(services):
        spec = ServiceSpec(name=f"svc{index}")
        spec.task.container.image = "busybox"
        spec.task.container.command.extend(["sleep", "86400"])
        spec.replicated.replicas = per_service
        stub.CreateService(CreateServiceRequest(spec=spec), timeout=60)
    total = per_service * services
    placed_at: list[float] = []

    def all_running() -> bool:
        info = stub.GetInfo(GetInfoRequest(), timeout=120)
        if not placed_at and info.tasks_total >= total and info.tasks_pending == 0:
            placed_at.append(time.monotonic() - start)
        return bool(info.tasks_running >= total)

    wait(all_running, f"{total} tasks RUNNING", timeout, interval=0.2)
    took = time.monotonic() - start
    return (placed_at[0] if placed_at else took), took


def report(nodes: int, total: int, placed: float, took: float, sampler: Sampler) -> None:
    result = {
        "nodes": nodes,
        "tasks": total,
        "seconds_to_placed": round(placed, 1),
        "placed_per_second": round(total / placed, 1),
        "seconds_to_running": round(took, 1),
        "tasks_per_second": round(total / took, 1),
        "controller_peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        **{
            f"{name.replace(' ', '_')}_p{int(q * 100)}_ms": round(percentile(values, q) * 1000, 1)
            for name, values in sampler.latencies.items()
            for q in (0.5, 0.99)
        },
        "api_samples": len(sampler.latencies["node ls"]),
    }
    print(
        f"{total} tasks placed and stored after {placed:.1f} s "
        f"({result['placed_per_second']} tasks/s)"
    )
    print(
        f"{total} tasks on {nodes} nodes RUNNING after {took:.1f} s "
        f"({result['tasks_per_second']} tasks/s); controller peak RSS "
        f"{result['controller_peak_rss_mib']} MiB"
    )
    for name, values in sampler.latencies.items():
        print(
            f"  {name}: p50 {percentile(values, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.0f} ms, "
            f"median {statistics.median(values) * 1000 if values else 0:.0f} ms"
        )
    print(json.dumps(result))


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dockyard-scale-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        pid, stub = start_cluster(root, args.nodes, args.timeout, processes)
        sampler = Sampler(pid, stub)
        sampler.start()
        per_service = args.tasks // args.services
        placed, took = create_and_wait(stub, args.services, per_service, args.timeout)
        sampler.done.set()
        sampler.join(5)
        report(args.nodes, per_service * args.services, placed, took, sampler)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
