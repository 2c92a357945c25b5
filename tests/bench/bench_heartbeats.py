"""Control-plane benchmark: one real controller, N agent sessions in one process.

    python tests/bench/bench_heartbeats.py [--agents 100] [--duration 30] [--heartbeat-period 2.0]

Measures the controller's CPU and RSS/PSS (and its embedded etcd's, separately)
idle and then with N sessions heartbeating, plus heartbeat round trips seen by
the agents. `--agents-only` is the internal mode that runs the sessions
("many agents in one process", as kubemark does); it takes commands on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import ListNodesRequest
from dockyard.v1.types_pb2 import NodeDescription, NodeStatus, Platform, Resources

BIN = Path(sys.executable).parent
READY = NodeStatus.State.READY
DESCRIPTION = NodeDescription(
    hostname="bench",
    platform=Platform(os="linux", architecture="amd64"),
    resources=Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30),
    agent_version="bench",
    runtime="hollow",
    runtime_version="bench",
    kernel_version="bench",
)


# -- agents process -------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_agents(controller: str, count: int) -> None:
    """Run `count` sessions; stdin: `reset` clears RTTs, `stop` (or EOF) prints a summary."""
    from dockyard.agent.identity import NodeIdentity
    from dockyard.agent.session import ControllerSession
    from dockyard.common import logging as dlogging

    dlogging.configure("warning", json=True)
    sessions = [
        ControllerSession(
            [controller],
            NodeIdentity(secrets.token_hex(10), f"bench-{i}"),
            lambda: DESCRIPTION,
            keep_rtts=1000,
        )
        for i in range(count)
    ]
    tasks = [asyncio.create_task(s.run()) for s in sessions]
    await asyncio.gather(*(s.connected.wait() for s in sessions))
    print("connected", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "reset":
        for s in sessions:
            s.status.rtts.clear()
        print("reset", flush=True)
    rtts = [r for s in sessions for r in s.status.rtts]
    summary = {
        "acks": len(rtts),
        "p50_ms": _quantile(rtts, 0.50) * 1e3,
        "p99_ms": _quantile(rtts, 0.99) * 1e3,
        "max_ms": max(rtts, default=float("nan")) * 1e3,
        "mean_ms": statistics.fmean(rtts) * 1e3 if rtts else float("nan"),
        "not_connected": sum(s.status.state != "connected" for s in sessions),
        "failed_tasks": sum(t.done() for t in tasks),
    }
    print(json.dumps(summary), flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- measuring --------------------------------------------------------------------


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def measure(procs: dict[str, psutil.Process], seconds: float) -> dict[str, dict[str, float]]:
    """CPU % of one core, peak/avg RSS and PSS (MiB) of each process over `seconds`."""

    def cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    start = {k: cpu(p) for k, p in procs.items()}
    mem: dict[str, list[tuple[int, int]]] = {k: [] for k in procs}
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        for k, p in procs.items():
            info = p.memory_full_info()
            mem[k].append((info.rss, info.pss))
        time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - began))))
    wall = time.monotonic() - began
    mib = 1 << 20
    return {
        k: {
            "cpu_pct": (cpu(p) - start[k]) / wall * 100,
            "rss_peak": max(r for r, _ in mem[k]) / mib,
            "rss_avg": statistics.fmean(r for r, _ in mem[k]) / mib,
            "pss_peak": max(s for _, s in mem[k]) / mib,
            "pss_avg": statistics.fmean(s for _, s in mem[k]) / mib,
        }
        for k, p in procs.items()
    }


def node_states(address: str) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        reply = control_pb2_grpc.ControlStub(channel).ListNodes(ListNodesRequest(), timeout=5)
    return [n.status.state for n in reply.nodes]


def wait_until(what: str, predicate: Any, timeout: float, proc: subprocess.Popen[Any]) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: process {proc.pid} exited with {proc.returncode}")
        with contextlib.suppress(grpc.RpcError):
            if predicate():
                return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def stop_group(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def command(agents: subprocess.Popen[str], line: str) -> str:
    assert agents.stdin is not None and agents.stdout is not None
    agents.stdin.write(line + "\n")
    agents.stdin.flush()
    return agents.stdout.readline().strip()


def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    address = f"127.0.0.1:{free_port()}"
    controller: subprocess.Popen[bytes] | None = None
    agents: subprocess.Popen[str] | None = None
    etcd: psutil.Process | None = None
    logs: list[IO[bytes]] = []
    try:
        logs.append(open(tmp / "controller.log", "wb"))  # noqa: SIM115
        controller = subprocess.Popen(
            [
                str(BIN / "dockyard-controller"),
                "run",
                "--http-listen",
                "",
                "--listen",
                address,
                "--state-dir",
                str(tmp / "state"),
                "--heartbeat-period",
                str(args.heartbeat_period),
                "--insecure",
            ],
            stdin=subprocess.DEVNULL,
            stdout=logs[0],
            stderr=logs[0],
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        wait_until("controller", lambda: node_states(address) == [], 60, controller)
        ctl = psutil.Process(controller.pid)
        etcd = next(c for c in ctl.children() if c.name() == "etcd")
        procs = {"controller": ctl, "etcd": etcd}
        print(f"controller {address} pid {ctl.pid}, etcd pid {etcd.pid}; logs in {tmp}")
        print(f"idle baseline: {args.duration:g} s ...", flush=True)
        idle = measure(procs, args.duration)

        logs.append(open(tmp / "agents.log", "wb"))  # noqa: SIM115
        agents = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--agents-only",
                "--controller",
                address,
                "--agents",
                str(args.agents),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logs[1],
            text=True,
            start_new_session=True,
        )
        took = wait_until(
            f"{args.agents} nodes READY",
            lambda: sum(s == READY for s in node_states(address)) == args.agents,
            120,
            agents,
        )
        print(
            f"{args.agents} nodes READY after {took:.1f} s; loaded: {args.duration:g} s ...",
            flush=True,
        )
        assert agents.stdout is not None and agents.stdout.readline().strip() == "connected"
        assert command(agents, "reset") == "reset"
        agents_ps = psutil.Process(agents.pid)
        loaded = measure({**procs, "agents": agents_ps}, args.duration)
        ready = sum(s == READY for s in node_states(address))
        rtt = json.loads(command(agents, "stop"))
        agents.wait(30)
        report(args, idle, loaded, rtt, ready)
    finally:
        stop_group(agents)
        stop_group(controller)
        if etcd is not None:
            with contextlib.suppress(psutil.Error):
                etcd.kill()
        for f in logs:
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    args: argparse.Namespace,
    idle: dict[str, dict[str, float]],
    loaded: dict[str, dict[str, float]],
    rtt: dict[str, float],
    ready: int,
) -> None:
    n = args.agents
    print(
        f"\nDockyard heartbeat benchmark: {n} agents, period {args.heartbeat_period:g} s, "
        f"{args.duration:g} s per phase, {os.cpu_count()} CPUs"
    )
    print(
        f"{'process / phase':<22}{'CPU %':>8}{'RSS peak':>10}{'RSS avg':>9}"
        f"{'PSS peak':>10}{'PSS avg':>9}  (MiB)"
    )
    for phase, data in (("idle", idle), ("loaded", loaded)):
        for name, m in data.items():
            print(
                f"{name + ' ' + phase:<22}{m['cpu_pct']:>8.2f}{m['rss_peak']:>10.1f}"
                f"{m['rss_avg']:>9.1f}{m['pss_peak']:>10.1f}{m['pss_avg']:>9.1f}"
            )
    c_idle, c_load = idle["controller"]["cpu_pct"], loaded["controller"]["cpu_pct"]
    per100 = (c_load - c_idle) * 100 / n
    ratio = c_load / c_idle if c_idle > 0 else float("inf")
    print(
        f"controller CPU: idle {c_idle:.2f} %, loaded {c_load:.2f} %, "
        f"+{per100:.2f} % per 100 agents; loaded/idle = {ratio:.1f}x"
    )
    print(
        f"heartbeat RTT over {rtt['acks']:.0f} acks: p50 {rtt['p50_ms']:.2f} ms, "
        f"p99 {rtt['p99_ms']:.2f} ms, max {rtt['max_ms']:.2f} ms; "
        f"READY at end {ready}/{n}, sessions not connected {rtt['not_connected']:.0f}"
    )
    print(
        json.dumps(
            {
                "agents": n,
                "heartbeat_period": args.heartbeat_period,
                "duration": args.duration,
                "idle": idle,
                "loaded": loaded,
                "rtt": rtt,
                "ready_at_end": ready,
                "controller_cpu_per_100_agents": per100,
                "controller_cpu_loaded_over_idle": ratio,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--heartbeat-period", type=float, default=2.0)
    parser.add_argument("--agents-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--controller", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agents_only:
        asyncio.run(run_agents(args.controller, args.agents))
        return

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        bench(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; stopped everything")


if __name__ == "__main__":
    main()
