"""Micro-benchmark: the CPU of one container start with N containers already running.

    python tests/bench/bench_mounts.py [--counts 0,50,100] [--samples 8] [--rounds 2]
                                       [--baseline PYTHONPATH] [--network none|host]

Run as root (real runc, conmon, overlayfs). Each round runs this tree and, with
--baseline, another tree (a directory holding its `dockyard` package, as
bench_swarm.py's --baseline), one after the other in fresh processes, order swapped
every round. In each process a `RuncRuntime` (a fresh state dir and cgroup parent)
starts `sleep 3600` containers up to each count N, then times --samples more starts
of `sleep 3600`, one at a time, each removed before the next:

  init   CPU ms in the new container's cgroup when `start` returns (`runc init`:
         namespaces, mounts, pivot_root, seccomp; then the exec of sleep)
  agent  CPU ms of this process's own cgroup during `start` (Python, conmon, the shim,
         `runc run`; the idle conmons of the running containers add nothing)
  wall   ms of `RuncRuntime.start`
  mounts lines of /proc/self/mountinfo (the host's mount namespace) at that N

Prints each process's medians per N, then the medians of all rounds per tree. Cleans
up every container, mount and cgroup it made, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _cgroup_cpu_ms(parent: str, cid: str) -> float:
    usage = Path(f"/sys/fs/cgroup/cpuacct/{parent}/{cid}/cpuacct.usage")
    return int(usage.read_text()) / 1e6


class OwnCgroup:
    """A cpuacct cgroup this process (and so conmon, the shim and `runc run`) runs in."""

    def __init__(self) -> None:
        self.path = Path(f"/sys/fs/cgroup/cpuacct/dockyard-mounts-self-{uuid.uuid4().hex[:6]}")

    def __enter__(self) -> OwnCgroup:
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        Path("/sys/fs/cgroup/cpuacct/cgroup.procs").write_text(str(os.getpid()))
        for pid in (self.path / "cgroup.procs").read_text().split():  # nothing of ours left
            Path("/sys/fs/cgroup/cpuacct/cgroup.procs").write_text(pid)
        self.path.rmdir()

    def cpu_ms(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e6


def _mount_count() -> int:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sum(1 for _ in f)


async def _measure(counts: list[int], samples: int, network: str) -> dict[str, Any]:
    import structlog

    from dockyard.agent.runtime.base import ContainerSpec
    from dockyard.agent.runtime.runc.runtime import RuncRuntime
    from tests.runtime.conftest import cleanup_everything, make_busybox_rootfs

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    tmp = Path(tempfile.mkdtemp(prefix="dockyard-mounts-"))
    parent = f"dockyard-mounts-{uuid.uuid4().hex[:6]}"
    state = tmp / "state"
    layer = make_busybox_rootfs(tmp / "layer")
    runtime = RuncRuntime(state, cgroup_parent=parent)

    def config() -> ContainerSpec:
        cid = f"m{uuid.uuid4().hex[:12]}"
        return ContainerSpec(
            id=cid,
            name=cid,
            image="busybox",
            lower_dirs=[layer],
            command=["sleep", "3600"],
            network=network,  # type: ignore[arg-type]
        )

    async def start_one() -> tuple[str, float, float]:
        info = await runtime.create(config())
        c0, t0 = own.cpu_ms(), time.perf_counter()
        await runtime.start(info.id)
        return info.id, own.cpu_ms() - c0, (time.perf_counter() - t0) * 1000

    result: dict[str, Any] = {}
    own = OwnCgroup().__enter__()
    try:
        await runtime.recover()
        await runtime.remove((await start_one())[0], force=True)  # warm caches
        running = 0
        for n in counts:
            while running < n:
                await start_one()
                running += 1
            rows = []
            for _ in range(samples):
                cid, cpu, wall = await start_one()
                rows.append((_cgroup_cpu_ms(parent, cid), cpu, wall, _mount_count()))
                await runtime.remove(cid, force=True)
            result[str(n)] = {
                "init": statistics.median(r[0] for r in rows),
                "agent": statistics.median(r[1] for r in rows),
                "wall": statistics.median(r[2] for r in rows),
                "mounts": rows[-1][3],
            }
    finally:
        await runtime.close()
        cleanup_everything(state, parent)
        own.__exit__()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _run_tree(pythonpath: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--counts",
        args.counts,
        "--samples",
        str(args.samples),
        "--network",
        args.network,
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="0,50,100")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of a tree to compare with")
    parser.add_argument("--network", default="none", choices=["none", "host"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.worker:
        print(json.dumps(asyncio.run(_measure(counts, args.samples, args.network))))
        return
    trees = [("this", "")] + ([("baseline", args.baseline)] if args.baseline else [])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for round_ in range(args.rounds):
        order = trees if round_ % 2 == 0 else list(reversed(trees))
        for name, path in order:
            res = _run_tree(path, args)
            runs[name].append(res)
            cells = "  ".join(
                f"N={n}: init {r['init']:.1f} agent {r['agent']:.1f} wall {r['wall']:.1f} "
                f"mounts {r['mounts']}"
                for n, r in res.items()
            )
            print(f"round {round_ + 1} {name:8s} {cells}  [load {_load()}]", flush=True)
    print("medians over rounds (ms):")
    for name, _ in trees:
        for n in counts:
            rs = [r[str(n)] for r in runs[name]]
            print(
                f"  {name:8s} N={n:3d}: init {statistics.median(r['init'] for r in rs):6.1f}"
                f"  agent {statistics.median(r['agent'] for r in rs):6.1f}"
                f"  wall {statistics.median(r['wall'] for r in rs):6.1f}"
                f"  mounts {rs[-1]['mounts']}"
            )


if __name__ == "__main__":
    main()
