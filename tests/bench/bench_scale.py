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

import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
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


def wait(predicate: object, what: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.5)
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
            for name, call, request in (
                ("service ls", self.stub.ListServices, ListServicesRequest()),
                ("node ls", self.stub.ListNodes, ListNodesRequest()),
            ):
                start = time.perf_counter()
                call(request, timeout=60)
                self.latencies[name].append(time.perf_counter() - start)
            self.done.wait(1.0)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dockyard-scale-"))
    address = f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        controller = spawn([str(BIN / "dockyard-controller"), "run", "--listen", address,
                            "--state-dir", str(root / "controller"), "--heartbeat-period", "5",
                            "--log-level", "warning", "--insecure"], root / "controller.log")
        processes.append(controller)
        channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 512 * 1024 * 1024)])
        stub = control_pb2_grpc.ControlStub(channel)

        def answers() -> bool:
            try:
                stub.ListNodes(ListNodesRequest(), timeout=2)
                return True
            except grpc.RpcError:
                return False

        wait(answers, "the controller", 60)
        processes.append(spawn([str(BIN / "dockyard-agent"), "hollow", "--controller", address,
                                "--count", str(args.nodes), "--state-dir", str(root / "hollow"),
                                "--cpus", "64", "--memory", "256G", "--log-level", "warning"],
                               root / "hollow.log"))
        joined = wait(lambda: sum(n.status.state == NodeStatus.READY for n in
                                  stub.ListNodes(ListNodesRequest(), timeout=60).nodes)
                      >= args.nodes, f"{args.nodes} nodes READY", args.timeout)
        print(f"{args.nodes} hollow nodes READY after {joined:.1f} s")
        sampler = Sampler(controller.pid, stub)
        sampler.start()
        per_service = args.tasks // args.services
        start = time.monotonic()
        for index in range(args.services):
            spec = ServiceSpec(name=f"svc{index}")
            spec.task.container.image = "busybox"
            spec.task.container.command.extend(["sleep", "86400"])
            spec.replicated.replicas = per_service
            stub.CreateService(CreateServiceRequest(spec=spec), timeout=60)
        total = per_service * args.services

        def all_running() -> bool:
            summaries = stub.ListServices(ListServicesRequest(), timeout=120).services
            return sum(s.running for s in summaries) >= total

        took = wait(all_running, f"{total} tasks RUNNING", args.timeout)
        took = time.monotonic() - start
        sampler.done.set()
        sampler.join(5)
        result = {
            "nodes": args.nodes, "tasks": total, "seconds_to_running": round(took, 1),
            "tasks_per_second": round(total / took, 1),
            "controller_peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
            **{f"{name.replace(' ', '_')}_p{int(q * 100)}_ms":
               round(percentile(values, q) * 1000, 1)
               for name, values in sampler.latencies.items() for q in (0.5, 0.99)},
            "api_samples": len(sampler.latencies["node ls"]),
        }
        print(f"{total} tasks on {args.nodes} nodes RUNNING after {took:.1f} s "
              f"({result['tasks_per_second']} tasks/s); controller peak RSS "
              f"{result['controller_peak_rss_mib']} MiB")
        for name, values in sampler.latencies.items():
            print(f"  {name}: p50 {percentile(values, 0.5) * 1000:.0f} ms, "
                  f"p99 {percentile(values, 0.99) * 1000:.0f} ms, "
                  f"median {statistics.median(values) * 1000 if values else 0:.0f} ms")
        print(json.dumps(result))
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
