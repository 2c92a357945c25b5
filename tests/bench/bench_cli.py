"""`dockyard -H AGENT ps`, whole process, against `docker ps` of a private dockerd.

Runs, interleaved, `--rounds` times each (medians printed, with `uptime` before and
after, since the machine is shared):

- `python -c pass` (this venv's interpreter): the floor of any Python CLI;
- `docker ps` against a private dockerd (own data-root, exec-root, socket, no bridge,
  no iptables; see benchlib.Docker): the anchor;
- `dockyard -H AGENT ps` on the fast path (cli/fast.py) and with `DOCKYARD_FAST=0`
  (the full CLI: click and grpcio), against one runc agent with `--containers`
  containers running (the same number as in dockerd).

Before timing it checks that both dockyard forms print the same and that the fast path
served the command (`DOCKYARD_FAST=only`).

- with `--baseline-bin PATH`, that other install's `dockyard -H AGENT ps` too (e.g. main's
  tree, `/work/main/.venv/bin/dockyard`: the fast path before a change), interleaved.

    python tests/bench/bench_cli.py [--rounds 9] [--containers 3] [--baseline-bin PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BIN,
    Cleanup,
    Docker,
    build_and_push,
    free_port,
    install_limits,
    start_agent,
    start_registry,
)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


def interleaved(
    runs: dict[str, tuple[list[str], dict[str, str]]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each run's wall and CPU times, `rounds` times, one of each in turn."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (argv, run_env) in runs.items():
            wall, used = timed(argv, run_env)
            times[name].append(wall)
            cpu[name].append(used)
    return times, cpu


def compare(
    dockyard: list[str], env: dict[str, str], full_env: dict[str, str], tries: int = 5
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], bool]:
    """`ps` on the fast path (which must serve it) and on the full CLI, back to back, until
    both print the same ("Up 5 seconds" may tick between the two), at most `tries` times."""
    for _ in range(tries):
        fast = subprocess.run(
            [*dockyard, "ps"], env={**env, "DOCKYARD_FAST": "only"}, text=True, capture_output=True
        )
        if fast.returncode != 0:
            raise SystemExit(f"the fast path did not serve `ps`: {fast.stderr}")
        full = subprocess.run([*dockyard, "ps"], env=full_env, text=True, capture_output=True)
        if fast.stdout == full.stdout:
            return fast, full, True
    return fast, full, False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--containers", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="global limit, seconds")
    parser.add_argument("--baseline-bin", help="another install's dockyard, timed alongside")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or shutil.which("conmon") is None:
        print("bench_cli needs root, runc and conmon", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-cli-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    try:
        return run(args, root, cleanup)
    finally:
        cleanup.run()


def run(args: argparse.Namespace, root: Path, cleanup: Cleanup) -> int:
    print(f"start: {uptime()}")
    registry = start_registry(root / "registry", cleanup)
    image = f"{registry}/bench/busybox:latest"
    build_and_push("busybox", image, root / "build.log")
    cgroup = f"dockyard-bench-cli-{root.name[-6:]}"
    agent, _ = start_agent(
        root / "agents", "cli", f"127.0.0.1:{free_port()}", registry, cgroup, cleanup
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(root / "cli-config")
    dockyard = [str(BIN / "dockyard"), "-H", agent]
    for i in range(args.containers):
        subprocess.run(
            [*dockyard, "run", "-d", "--name", f"c{i}", image, "sleep", "3600"],
            env=env,
            check=True,
            capture_output=True,
        )
    docker = Docker(root / "docker", registry, cleanup, private=True)
    have_docker = docker.start()
    if have_docker:
        docker.docker("pull", image)
        for _ in range(args.containers):
            docker.docker("run", "-d", "--network", "none", image, "sleep", "3600")

    full_env = {**env, "DOCKYARD_FAST": "0"}
    fast, full, same = compare(dockyard, env, full_env)
    print(f"fast path served `ps`; byte-identical to the full CLI's output: {same}")
    if not same:  # "Up 5 seconds" may tick between the two; tests/cli/test_fast_path.py checks
        print(f"fast:\n{fast.stdout}full:\n{full.stdout}")

    python = sys.executable
    runs: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([python, "-c", "pass"], env),
        "dockyard -H AGENT ps (fast path)": ([*dockyard, "ps"], env),
        "dockyard -H AGENT ps (DOCKYARD_FAST=0)": ([*dockyard, "ps"], full_env),
    }
    if have_docker:
        runs["docker ps (private dockerd)"] = (["docker", "ps"], docker.env)
    if args.baseline_bin:
        runs["baseline install: dockyard -H AGENT ps"] = (
            [args.baseline_bin, "-H", agent, "ps"],
            env,
        )
    times, cpu = interleaved(runs, args.rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nmedians of {args.rounds} interleaved runs, whole process: wall time, and the")
    print("client process's CPU time (user + system; the daemon's is not counted):")
    for name, value in medians.items():
        used = statistics.median(cpu[name])
        print(f"  {name:42} {value * 1000:8.1f} ms   cpu {used * 1000:7.1f} ms")
    fast_ms = medians["dockyard -H AGENT ps (fast path)"]
    full_ms = medians["dockyard -H AGENT ps (DOCKYARD_FAST=0)"]
    print("\nratios:")
    print(f"  fast / full CLI        {fast_ms / full_ms:.2f}x")
    print(f"  fast / python -c pass  {fast_ms / medians['python -c pass']:.2f}x")
    if have_docker:
        print(f"  fast / docker ps       {fast_ms / medians['docker ps (private dockerd)']:.2f}x")
    else:
        print(f"  docker ps: not measured ({docker.why_not})")
    if args.baseline_bin:
        before = medians["baseline install: dockyard -H AGENT ps"]
        print(f"  fast / baseline install ({args.baseline_bin})  {fast_ms / before:.2f}x")
    print(f"\nend: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
