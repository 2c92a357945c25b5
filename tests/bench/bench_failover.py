"""Failover benchmark: SIGKILL the leader, scale up through another controller.

    python tests/bench/bench_failover.py [--rounds 10] [--baseline PYTHONPATH]
        [--leader-ttl SECONDS]

Starts one etcd, three `dockyard-controller run` processes on it and a hollow fleet
of three agents that knows every controller. Each round finds the leader, SIGKILLs
it, at once scales a service up by one through another controller, and measures the
seconds from the kill until the new slot's task is placed (it has a node), read
through that controller, and until every agent has a session to the new leader
(`agent_sessions` of the leader's GetInfo, polled every 50 ms beside the scale-up).
The killed controller is started again (same state dir) and
the cluster left to settle before the next round. Prints p50/p99/max; `--baseline
DIR` first runs the same rounds with PYTHONPATH=DIR (another tree of the code, such as
main's) and prints the ratios. Each side runs with its own default lease unless
`--leader-ttl` is given. Cleans up every process and the temp dir, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetInfoRequest,
    GetServiceRequest,
    ListTasksRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import TaskStatus
from dockyard.v1.workloads_pb2 import ServiceSpec

BIN = Path(sys.executable).parent
ENV = dict(os.environ)


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True, env=ENV)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait(predicate: Any, what: str, timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except grpc.RpcError:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class Rig:
    """etcd, three controllers, three hollow agents; every process it started."""

    def __init__(self, root: Path, leader_ttl: int | None) -> None:
        self.root = root
        self.leader_ttl = leader_ttl
        self.processes: list[subprocess.Popen[bytes]] = []
        self.controllers: list[subprocess.Popen[bytes]] = []
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.channels = [grpc.insecure_channel(a) for a in self.addresses]
        self.stubs = [control_pb2_grpc.ControlStub(c) for c in self.channels]
        self.etcd = f"127.0.0.1:{free_port()}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        self.processes.append(
            spawn(
                [
                    "etcd",
                    "--name=bench",
                    f"--data-dir={self.root / 'etcd'}",
                    f"--listen-client-urls=http://{self.etcd}",
                    f"--advertise-client-urls=http://{self.etcd}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=bench={peer}",
                ],
                self.root / "etcd.log",
            )
        )
        for index in range(3):
            self.controllers.append(self._controller(index))
        wait(lambda: self.leader() is not None, "a leader", 60)
        hollow = [str(BIN / "dockyard-agent"), "hollow", "--count", "3"]
        for address in self.addresses:
            hollow += ["--controller", address]
        hollow += ["--state-dir", str(self.root / "hollow"), "--log-level", "warning"]
        self.processes.append(spawn(hollow, self.root / "hollow.log"))

    def _controller(self, index: int) -> subprocess.Popen[bytes]:
        args = [
            str(BIN / "dockyard-controller"),
            "run",
            "--etcd",
            self.etcd,
            "--listen",
            self.addresses[index],
            "--http-listen",
            "",
            "--state-dir",
            str(self.root / f"c{index}"),
            "--insecure",
            "--resolve-image",
            "never",
            "--heartbeat-period",
            "0.5",
            "--log-level",
            "warning",
        ]
        if self.leader_ttl is not None:
            args += ["--leader-ttl", str(self.leader_ttl)]
        return spawn(args, self.root / f"c{index}.log")

    def restart(self, index: int) -> None:
        self.controllers[index] = self._controller(index)

    def leader(self) -> int | None:
        for index, stub in enumerate(self.stubs):
            if self.controllers[index].poll() is not None:
                continue
            try:
                if stub.GetInfo(GetInfoRequest(), timeout=2).is_leader:
                    return index
            except grpc.RpcError:
                continue
        return None

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for process in [*reversed(self.controllers), *reversed(self.processes)]:
            stop(process)


def create_service(stub: Any, replicas: int) -> None:
    spec = ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "86400"])
    spec.replicated.replicas = replicas
    stub.CreateService(CreateServiceRequest(spec=spec), timeout=30)


def scale(stub: Any, replicas: int) -> None:
    service = stub.GetService(GetServiceRequest(service="web"), timeout=10)
    spec = ServiceSpec()
    spec.CopyFrom(service.spec)
    spec.replicated.replicas = replicas
    request = UpdateServiceRequest(service="web", version=service.meta.version, spec=spec)
    stub.UpdateService(request, timeout=10)


def placed(stub: Any, slot: int) -> bool:
    tasks = stub.ListTasks(ListTasksRequest(services=["web"]), timeout=5).tasks
    return any(t.slot == slot and t.node_id for t in tasks)


def running(stub: Any, replicas: int) -> bool:
    tasks = stub.ListTasks(ListTasksRequest(services=["web"]), timeout=5).tasks
    return sum(1 for t in tasks if t.status.state == TaskStatus.RUNNING) >= replicas


AGENTS = 3


class Reconnection(threading.Thread):
    """Seconds from `since` until a live controller other than `killed` leads with every
    agent's session (-1: not within the timeout)."""

    def __init__(self, rig: Rig, killed: int, since: float, timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.rig, self.killed, self.since, self.timeout = rig, killed, since, timeout
        self.took = -1.0

    def run(self) -> None:
        while time.monotonic() - self.since < self.timeout:
            for index, stub in enumerate(self.rig.stubs):
                if index == self.killed:
                    continue
                try:
                    info = stub.GetInfo(GetInfoRequest(), timeout=2)
                except grpc.RpcError:
                    continue
                if info.is_leader and info.agent_sessions >= AGENTS:
                    self.took = time.monotonic() - self.since
                    return
            time.sleep(0.05)


def run_rounds(rounds: int, leader_ttl: int | None) -> tuple[list[float], list[float]]:
    root = Path(tempfile.mkdtemp(prefix="dockyard-failover-"))
    rig = Rig(root, leader_ttl)
    times: list[float] = []
    reconnects: list[float] = []
    try:
        rig.start()
        replicas = 3
        leader = rig.leader()
        assert leader is not None
        create_service(rig.stubs[leader], replicas)
        wait(lambda: running(rig.stubs[leader], replicas), "3 replicas RUNNING", 60)
        for index in range(rounds):
            replicas += 1
            leader, took, reconnected = one_round(rig, replicas)
            times.append(took)
            reconnects.append(reconnected)
            print(
                f"  round {index + 1}: leader c{leader} killed, slot placed after {took:.2f} s, "
                f"agents reconnected after {reconnected:.2f} s"
            )
    finally:
        rig.close()
        shutil.rmtree(root, ignore_errors=True)
    return times, reconnects


def one_round(rig: Rig, replicas: int) -> tuple[int, float, float]:
    """Kill the leader, scale to `replicas` through the next controller; (the killed
    controller, seconds from the kill to the new slot placed, to every agent's session
    on the new leader). Then let it settle."""
    leader = wait_leader(rig)
    wait(lambda: all_connected(rig, leader), "every agent's session on the leader", 60)
    via = rig.stubs[(leader + 1) % 3]
    killed = time.monotonic()
    os.killpg(rig.controllers[leader].pid, signal.SIGKILL)
    rig.controllers[leader].wait()
    reconnection = Reconnection(rig, leader, killed)
    reconnection.start()
    wait(lambda: scale(via, replicas) or True, "the scale-up", 30)
    wait(lambda: placed(via, replicas), f"slot {replicas} placed", 120)
    took = time.monotonic() - killed
    reconnection.join()
    rig.restart(leader)
    wait(lambda: running(via, replicas), "every replica RUNNING", 120)
    wait(lambda: all_answer(rig), "every controller answering", 60)
    return leader, took, reconnection.took


def all_connected(rig: Rig, leader: int) -> bool:
    try:
        return rig.stubs[leader].GetInfo(GetInfoRequest(), timeout=2).agent_sessions >= AGENTS
    except grpc.RpcError:
        return False


def wait_leader(rig: Rig) -> int:
    found: list[int] = []

    def has_leader() -> bool:
        index = rig.leader()
        if index is not None:
            found.append(index)
        return index is not None

    wait(has_leader, "a leader", 60)
    return found[-1]


def all_answer(rig: Rig) -> bool:
    for stub in rig.stubs:
        stub.GetInfo(GetInfoRequest(), timeout=2)
    return True


def summary(name: str, measured: tuple[list[float], list[float]]) -> dict[str, float]:
    times, reconnects = measured
    result = {
        "p50_s": round(percentile(times, 0.5), 2),
        "p99_s": round(percentile(times, 0.99), 2),
        "max_s": round(max(times), 2),
        "reconnect_p50_s": round(percentile(reconnects, 0.5), 2),
        "reconnect_p99_s": round(percentile(reconnects, 0.99), 2),
    }
    print(
        f"{name}: {len(times)} kills, kill to placed p50 {result['p50_s']} s, "
        f"p99 {result['p99_s']} s, max {result['max_s']} s; kill to every agent on the "
        f"new leader p50 {result['reconnect_p50_s']} s, p99 {result['reconnect_p99_s']} s"
    )
    return result


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--leader-ttl", type=int, default=None)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    subprocess.run(["uptime"], check=False)
    baseline = None
    if args.baseline:
        print(f"baseline (PYTHONPATH={args.baseline}):")
        ENV["PYTHONPATH"] = args.baseline
        baseline = summary("baseline", run_rounds(args.rounds, args.leader_ttl))
        ENV.pop("PYTHONPATH")
        print("this tree:")
    result = summary("this tree", run_rounds(args.rounds, args.leader_ttl))
    if baseline is not None:
        for key in ("p50_s", "p99_s", "reconnect_p50_s", "reconnect_p99_s"):
            print(f"  {key}: {result[key]} vs {baseline[key]} ({result[key] / baseline[key]:.2f}x)")
    subprocess.run(["uptime"], check=False)
    print(json.dumps({"this_tree": result, "baseline": baseline}))


if __name__ == "__main__":
    main()
