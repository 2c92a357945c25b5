"""The latency of one `service create` of 1 replica on a quiet cluster, to RUNNING.

    python tests/bench/bench_single.py [--creates 20] [--nodes 3] [--quiet 1.0]
        [--baseline PYTHONPATH] [--candidate PYTHONPATH]

Starts a real controller (embedded etcd) and a hollow fleet of --nodes agents for this
tree (and, with --baseline, a second controller and fleet running that code, e.g.
main's), then, --creates times, on each cluster in turn (the order swapped every time):
waits --quiet seconds (no change anywhere: the control loops are idle), creates a
service of 1 replica through the API and polls the controller's service summary every
--poll seconds until its task is RUNNING (the hollow agent's report stored), then
removes the service. Prints the median, p10 and p90 of each side and the medians'
difference. What it measures is the control plane's path (orchestrator, scheduler,
assigner, the session's messages, the status write), not a runtime's start. Cleans up
every process and the temp dirs, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import ENV, _exit_on_sigterm, percentile, start_cluster, stop

from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    ListServicesRequest,
    RemoveServiceRequest,
)
from dockyard.v1.workloads_pb2 import ServiceSpec


class Side:
    """One controller and its fleet, running one tree's code."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"dockyard-single-{name}-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stub: Any = None
        self.samples: list[float] = []

    def start(self, pythonpath: str, nodes: int, timeout: float) -> None:
        if pythonpath:
            ENV["PYTHONPATH"] = pythonpath
        else:
            ENV.pop("PYTHONPATH", None)
        _, self.stub, _, _ = start_cluster(self.root, nodes, timeout, self.processes)

    def create_once(self, index: int, poll: float, timeout: float) -> float:
        """Seconds from the create's call to its task RUNNING; the service then removed."""
        name = f"single{index}"
        spec = ServiceSpec(name=name)
        spec.task.container.image = "busybox"
        spec.task.container.command.extend(["sleep", "86400"])
        spec.replicated.replicas = 1
        start = time.monotonic()
        self.stub.CreateService(CreateServiceRequest(spec=spec), timeout=60)
        while not self._running(name):
            if time.monotonic() - start > timeout:
                raise SystemExit(f"{self.name}: {name} not RUNNING after {timeout:.0f} s")
            time.sleep(poll)
        took = time.monotonic() - start
        self.stub.RemoveService(RemoveServiceRequest(service=name), timeout=60)
        self.samples.append(took)
        return took

    def _running(self, name: str) -> bool:
        listed = self.stub.ListServices(ListServicesRequest(names=[name]), timeout=60)
        return any(s.running >= 1 for s in listed.services)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        shutil.rmtree(self.root, ignore_errors=True)


def summary(samples: list[float]) -> str:
    return (
        f"median {1000 * statistics.median(samples):6.1f} ms  "
        f"p10 {1000 * percentile(samples, 0.1):6.1f}  p90 {1000 * percentile(samples, 0.9):6.1f}"
        f"  (n={len(samples)})"
    )


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=20, help="creates on each side")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds idle before each")
    parser.add_argument("--poll", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument(
        "--candidate", default="", help="PYTHONPATH of this tree's code (default: installed)"
    )
    args = parser.parse_args()
    subprocess.run(["uptime"], check=False)
    sides: list[Side] = []
    try:
        for name, pythonpath in (("this", args.candidate), ("baseline", args.baseline)):
            if name == "baseline" and not args.baseline:
                continue
            side = Side(name)
            sides.append(side)  # before it starts: its processes are stopped whatever happens
            side.start(pythonpath, args.nodes, args.timeout)
        for index in range(args.creates):
            order = sides if index % 2 == 0 else sides[::-1]
            for side in order:
                time.sleep(args.quiet)
                took = side.create_once(index, args.poll, args.timeout)
                print(f"  {index:3d} {side.name:8s} {1000 * took:6.1f} ms", flush=True)
        subprocess.run(["uptime"], check=False)
        results: dict[str, Any] = {}
        for side in sides:
            print(f"{side.name:8s} {summary(side.samples)}")
            results[side.name] = statistics.median(side.samples)
        if args.baseline:
            delta = results["this"] - results["baseline"]
            print(f"this - baseline (medians): {1000 * delta:+.1f} ms")
    finally:
        for side in sides:
            side.close()


if __name__ == "__main__":
    main()
