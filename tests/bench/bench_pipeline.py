"""The agent's task pipeline alone: CPU per task, no controller, no gRPC.

`--workers` real `Worker`s over `hollow_executor(HollowRuntime())` (a hollow node's
pipeline: task controllers, the task executor, the container service) each get one full
set of `--tasks` tasks like `bench_scale.py`'s (busybox, `sleep 86400`); a fake session
serializes the status batches it is handed. Measured: process CPU from the sets to the
last RUNNING report, and the cyclic GC's share (`gc.callbacks`). With `--baseline DIR`
the same run of the code under DIR (a `PYTHONPATH`, as `bench_scale.py`'s) alternates
with this tree's, `--rounds` times; medians at the end.

    python tests/bench/bench_pipeline.py --workers 250 --tasks 30 --baseline DIR --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class _Status:
    session_id = "s1"
    accepts_status_batches = True


class _Session:
    """Takes every report at once; counts the RUNNING ones."""

    def __init__(self, on_report: Callable[[], None]) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.status = _Status()
        self.running = 0
        self._on_report = on_report

    def report_many(self, reports: Sequence[Any]) -> bool:
        from dockyard.common.session_limits import status_batches
        from dockyard.common.states import TaskState
        from dockyard.v1.dispatcher_pb2 import AgentMessage

        for batch in status_batches(reports):
            AgentMessage(task_statuses=batch).SerializeToString()  # what the wire costs
        self.running += sum(r.status.state == TaskState.RUNNING for r in reports)
        self._on_report()
        return True


def _assignments(node: str, count: int) -> bytes:
    from dockyard.common.states import TaskState
    from dockyard.v1.dispatcher_pb2 import AssignmentSet
    from dockyard.v1.workloads_pb2 import ServiceSpec, Task

    spec = ServiceSpec(name="svc0")
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["sleep", "86400"])
    tasks = []
    for slot in range(1, count + 1):
        task = Task(
            id=uuid.uuid4().hex[:25],
            service_id="s" * 25,
            service_name="svc0",
            slot=slot,
            node_id=node,
            desired_state=TaskState.RUNNING,
        )
        task.spec.CopyFrom(spec.task)
        task.status.state = TaskState.ASSIGNED
        tasks.append(task)
    return AssignmentSet(full=True, version=1, tasks=tasks).SerializeToString()


async def _run(workers: int, per_worker: int) -> dict[str, Any]:
    from dockyard.agent.daemon import hollow_executor
    from dockyard.agent.runtime.hollow.runtime import HollowRuntime
    from dockyard.agent.worker import Worker
    from dockyard.common.gc_settle import settle_gc
    from dockyard.v1.dispatcher_pb2 import AssignmentSet

    settle_gc()  # as the fleet does before its nodes start
    total = workers * per_worker
    done = asyncio.Event()
    sessions: list[_Session] = []

    def on_report() -> None:
        if sum(s.running for s in sessions) >= total:
            done.set()

    root = Path(tempfile.mkdtemp(prefix="dockyard-pipeline-"))
    started: list[Worker] = []
    for index in range(workers):
        session = _Session(on_report)
        sessions.append(session)
        worker = Worker(hollow_executor(HollowRuntime()), session, root / str(index), persist=False)
        await worker.start()
        started.append(worker)
    sets = [_assignments(f"node{i}", per_worker) for i in range(workers)]
    collected = {"seconds": 0.0, "young": 0, "middle": 0, "old": 0, "at": 0.0}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected["at"] = time.process_time()
            return
        collected["seconds"] += time.process_time() - collected["at"]
        collected[("young", "middle", "old")[info["generation"]]] += 1

    gc.callbacks.append(on_gc)
    cpu, wall = time.process_time(), time.monotonic()
    for worker, data in zip(started, sets, strict=True):
        await worker.on_assignments(AssignmentSet.FromString(data))
    await done.wait()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    gc.callbacks.remove(on_gc)
    for worker in started:
        await worker.close()
    shutil.rmtree(root, ignore_errors=True)
    collected.pop("at")
    return {"tasks": total, "cpu_us_per_task": 1e6 * cpu / total, "wall_s": wall, "gc": collected}


def _child(args: argparse.Namespace, pythonpath: str) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    command = [sys.executable, __file__, "--child", *("--workers", str(args.workers))]
    command += ["--tasks", str(args.tasks)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=250)
    parser.add_argument("--tasks", type=int, default=30, help="tasks per worker")
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from dockyard.common import logging as dlogging

        dlogging.configure("warning")  # as the fleet runs
        print(json.dumps(asyncio.run(_run(args.workers, args.tasks))))
        return
    sides = {"this tree": ""} | ({"baseline": args.baseline} if args.baseline else {})
    results: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, pythonpath in reversed(sides.items()):  # the baseline first
            result = _child(args, pythonpath)
            results[side].append(result["cpu_us_per_task"])
            print(f"{side}: {json.dumps(result)}", flush=True)
    for side, values in results.items():
        print(f"{side}: median {statistics.median(values):.0f} µs of CPU per task")
    if args.baseline:
        ratio = statistics.median(results["this tree"]) / statistics.median(results["baseline"])
        print(f"this tree / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
