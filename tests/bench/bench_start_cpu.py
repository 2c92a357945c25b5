"""The runc runtime's own CPU per container: create, start, remove (this process's threads,
not conmon's or runc's), this tree against another one, alternating.

    python tests/bench/bench_start_cpu.py [--containers 30] [--rounds 5] [--baseline PYTHONPATH]

Run as root. Each round runs one child process per tree (the baseline first, then this
tree): it makes a RuncRuntime on a temporary state dir, creates, starts and waits for N
busybox ``true`` containers one after another, then removes them, and reports the
median CPU milliseconds (``time.process_time``: every thread of the process, children
excluded) of each step. Prints the medians over the rounds and the ratio. Each child
cleans up its containers, mounts and cgroups (also on failure).
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

from benchlib import tree_env

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("create", "start", "remove")


async def _child(n: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from dockyard.agent.runtime.base import ContainerSpec
    from dockyard.agent.runtime.runc.runtime import RuncRuntime
    from tests.runtime.conftest import cleanup_everything, make_busybox_rootfs

    tmp = Path(tempfile.mkdtemp(prefix="dockyard-startcpu-"))
    cgroup_parent = f"dockyard-startcpu-{uuid.uuid4().hex[:6]}"
    state = tmp / "state"
    samples: dict[str, list[float]] = {step: [] for step in STEPS}
    try:
        layer = make_busybox_rootfs(tmp / "layer")
        runtime = RuncRuntime(state, cgroup_parent=cgroup_parent)
        await runtime.recover()
        ids = []
        for i in range(n):
            cid = f"c{i}{uuid.uuid4().hex[:12]}"
            spec = ContainerSpec(
                id=cid,
                name=cid,
                image="busybox",
                lower_dirs=[layer],
                image_config={"Cmd": ["true"], "Env": ["PATH=/bin"]},
                extra_hosts=["10.1.2.3 db"],
            )
            t0 = time.process_time()
            await runtime.create(spec)
            t1 = time.process_time()
            await runtime.start(cid)
            t2 = time.process_time()
            samples["create"].append(t1 - t0)
            samples["start"].append(t2 - t1)
            await runtime.wait(cid)
            ids.append(cid)
        for cid in ids:
            t0 = time.process_time()
            await runtime.remove(cid)
            samples["remove"].append(time.process_time() - t0)
        await runtime.close()
    finally:
        cleanup_everything(state, cgroup_parent)
        shutil.rmtree(tmp, ignore_errors=True)
    return {step: statistics.median(v) * 1000 for step, v in samples.items()}


def _run(pythonpath: str, n: int) -> dict[str, float]:
    env = tree_env(pythonpath)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n)],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child))))
        return
    sides = {"this": "", **({"baseline": args.baseline} if args.baseline else {})}
    rounds: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in reversed(list(sides)):  # the baseline first in each round
            result = _run(sides[side], args.containers)
            rounds[side].append(result)
            load = os.getloadavg()[0]
            steps = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
            print(f"round {r + 1} {side}: CPU ms per container: {steps}   [{load:.1f}]")
    print(f"medians of {args.rounds} rounds (each the median of {args.containers} containers):")
    for step in STEPS:
        values = {side: statistics.median(x[step] for x in rounds[side]) for side in sides}
        line = "   ".join(f"{side} {v:.2f} ms" for side, v in values.items())
        if "baseline" in values:
            line += f"   this/baseline {values['this'] / values['baseline']:.2f}x"
        print(f"  {step:<8} {line}")


if __name__ == "__main__":
    main()
