"""Scheduler throughput: place 30,000 tasks on 1,000 nodes and print tasks/second.

Run: /work/venv/bin/python -m tests.scheduler.bench_scheduler [--nodes N] [--tasks N]
(not collected by pytest; no timing is asserted anywhere).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from dockyard.controller.scheduler import NodeInfo, Scheduler
from dockyard.v1.workloads_pb2 import Task

from .helpers import GIB, make_info, make_task

ZONES = ["a", "b", "c"]


def cluster(n_nodes: int) -> list[NodeInfo]:
    return [
        make_info(f"node-{i:05d}", cpus=64, memory=256 * GIB, labels={"zone": ZONES[i % 3]})
        for i in range(n_nodes)
    ]


def simple(n_tasks: int, services: int) -> list[Task]:
    """`services` services of equal size, each with a small reservation."""
    per = n_tasks // services
    return [
        make_task(f"s{s}-t{i}", f"svc{s}", cpus=0.01, memory=64 * 1024**2)
        for s in range(services)
        for i in range(per)
    ]


def mixed(n_tasks: int, services: int) -> list[Task]:
    """The same, with a constraint, a zone preference and a replicas limit."""
    per = n_tasks // services
    return [
        make_task(
            f"s{s}-t{i}",
            f"svc{s}",
            cpus=0.01,
            memory=64 * 1024**2,
            constraints=["node.labels.zone!=c"] if s % 2 else [],
            spread=["node.labels.zone"],
            max_replicas=100,
        )
        for s in range(services)
        for i in range(per)
    ]


def run(name: str, strategy: str, n_nodes: int, make: Callable[[], list[Task]]) -> None:
    infos = cluster(n_nodes)
    tasks = make()
    start = time.perf_counter()
    result = Scheduler(strategy).schedule(infos, tasks)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    print(
        f"{name:<28} {strategy:<8} {len(tasks):>7} tasks on {n_nodes:>5} nodes: "
        f"{elapsed:6.2f} s, {len(tasks) / elapsed:>9,.0f} tasks/s "
        f"({len(result.assignments)} placed, {len(result.pending)} pending)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=30000)
    args = parser.parse_args()
    n, t = args.nodes, args.tasks
    run("1 service", "spread", n, lambda: simple(t, 1))
    run("30 services", "spread", n, lambda: simple(t, 30))
    run("30 services", "binpack", n, lambda: simple(t, 30))
    run("30000 one-task services", "spread", n, lambda: simple(t, t))
    run("30 svc, constraint+pref", "spread", n, lambda: mixed(t, 30))


if __name__ == "__main__":
    main()
