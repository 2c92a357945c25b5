"""Fan-out: `dockyard node ls` to three clusters in one call against one call each.

    python tests/bench/bench_fanout.py [--agents 2] [--runs 10] [--timeout 600]

Starts three local clusters (each a `dockyard-controller run --insecure` with its own
embedded etcd, state dir and ports, and N hollow agents), makes a context per cluster
in a private DOCKYARD_CONFIG, then measures (medians of --runs):

  single   `dockyard -c cN node ls` for each cluster, one after the other (the sum is
           what a loop over the clusters costs; the slowest is the floor of a fan-out)
  fanout   `dockyard -c c0,c1,c2 node ls`: one process, the three asked at once
  inproc   the same in one process (no interpreter start-up): the three ListNodes
           calls one after the other vs through cli/fanout.py's run_each

Prints fanout / sum and fanout / slowest. Cleans up every process and the temp dir,
also on Ctrl-C and when --timeout runs out. No asserts on the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BIN,
    BenchTimeout,
    Cleanup,
    free_port,
    install_limits,
    median,
    ratio,
    spawn,
    stop_process,
    wait_for,
)

CLUSTERS = 3


def dockyard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dockyard"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def start_cluster(
    root: Path, index: int, agents: int, env: dict[str, str], cleanup: Cleanup
) -> str:
    address = f"127.0.0.1:{free_port()}"
    state = root / f"cluster{index}"
    state.mkdir()
    controller = spawn(
        [
            str(BIN / "dockyard-controller"),
            "run",
            "--insecure",
            "--listen",
            address,
            "--state-dir",
            str(state / "controller"),
            "--http-listen",
            f"127.0.0.1:{free_port()}",
            "--heartbeat-period",
            "0.5",
        ],
        state / "controller.log",
    )
    cleanup.add(f"controller {index}", lambda: stop_process(controller))
    wait_for(
        lambda: dockyard(env, "-H", address, "info").returncode == 0, f"controller {index}", 60
    )
    for n in range(agents):
        agent = spawn(
            [
                str(BIN / "dockyard-agent"),
                "run",
                "--insecure",
                "--runtime",
                "hollow",
                "--controller",
                address,
                "--name",
                f"c{index}-n{n}",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--state-dir",
                str(state / f"agent{n}"),
            ],
            state / f"agent{n}.log",
        )
        cleanup.add(f"agent {index}/{n}", lambda agent=agent: stop_process(agent))
    wait_for(
        lambda: dockyard(env, "-H", address, "node", "ls", "-q").stdout.count("\n") == agents,
        f"{agents} nodes on cluster {index}",
        60,
    )
    created = dockyard(env, "context", "create", f"c{index}", "--host", address)
    if created.returncode:
        raise RuntimeError(created.stderr)
    return address


def timed(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    result = dockyard(env, *args)
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"dockyard {' '.join(args)}: {result.stderr}")
    return elapsed


def in_process(runs: int) -> tuple[float, float]:
    """Medians of (the three ListNodes one after the other, the three through run_each)."""
    from dockyard.cli.client import call, resolve_targets
    from dockyard.cli.fanout import run_each
    from dockyard.v1 import control_pb2_grpc
    from dockyard.v1.control_pb2 import ListNodesRequest

    targets = resolve_targets((), ",".join(f"c{i}" for i in range(CLUSTERS)))

    def ask(target: object) -> object:
        return call(
            target,
            control_pb2_grpc.ControlStub,
            "ListNodes",  # type: ignore[arg-type]
            ListNodesRequest(),
        )

    sequential, fanned = [], []
    for _ in range(runs):
        start = time.perf_counter()
        for target in targets:
            ask(target)
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        outcomes = run_each(targets, ask, timeout=30)
        fanned.append(time.perf_counter() - start)
        if not all(o.ok for o in outcomes):
            raise RuntimeError([o.error for o in outcomes])
    return median(sequential), median(fanned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-fanout-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(root / "cli-config")
    os.environ["DOCKYARD_CONFIG"] = env["DOCKYARD_CONFIG"]
    try:
        for index in range(CLUSTERS):
            start_cluster(root, index, args.agents, env, cleanup)
        singles: list[list[float]] = [[] for _ in range(CLUSTERS)]
        fanout: list[float] = []
        for _ in range(args.runs):
            for index in range(CLUSTERS):
                singles[index].append(timed(env, "-c", f"c{index}", "node", "ls"))
            fanout.append(
                timed(env, "-c", ",".join(f"c{i}" for i in range(CLUSTERS)), "node", "ls")
            )
        each = [median(times) for times in singles]
        total, slowest, fanned = sum(each), max(each), median(fanout)
        print(f"node ls, {CLUSTERS} clusters x {args.agents} nodes, median of {args.runs} runs")
        print("  single calls: " + ", ".join(f"c{i} {t * 1000:.0f} ms" for i, t in enumerate(each)))
        print(f"  sum {total * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms")
        print(
            f"  fan-out call {fanned * 1000:.0f} ms: {ratio(fanned, total)} of the sum, "
            f"{ratio(fanned, slowest)} of the slowest"
        )
        sequential, concurrent = in_process(args.runs)
        print(
            f"  in one process: sequential {sequential * 1000:.1f} ms, run_each "
            f"{concurrent * 1000:.1f} ms ({ratio(concurrent, sequential)})"
        )
    except (KeyboardInterrupt, BenchTimeout) as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        cleanup.run()


if __name__ == "__main__":
    main()
