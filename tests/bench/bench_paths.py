"""The controller's Python paths per task at full size, without etcd, gRPC or agents.

    python tests/bench/bench_paths.py [--nodes 1000] [--services 30] [--per-service 1000]
        [--rounds 3] [--baseline PYTHONPATH]

What one task costs the leader's loops between the orchestrator's create and the
agent's RUNNING report, in CPU (process time, so a loaded machine inflates it less than
wall time): the view applying the created tasks (`create_apply`: decode each record as
the watch does, then `ClusterState._put`), the scheduling loop deciding the backlog in
batches of MAX_ROUND_TASKS as its `_round` orders it (`decide`: `_decide`, its writes
included), the view applying the placements (`assign_apply`), the status writer taking
a RUNNING report of every task and building its writes (`status`), and the view applying
those (`status_apply`). The rest of the controller's CPU in `bench_scale.py` is the
messages (gRPC, etcd's client), the assigner and the network map. `--baseline DIR` runs
the same in a child with PYTHONPATH=DIR (another tree, such as main's), alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dockyard.controller.assignments import StatusWriter
from dockyard.controller.orchestrators.tasks import new_task
from dockyard.controller.scheduler import loop as scheduler_loop
from dockyard.controller.state import ClusterState
from dockyard.controller.store import NODES, SERVICES, TASKS, Op, Store
from dockyard.v1.dispatcher_pb2 import TaskStatusReport
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus, TaskStatus
from dockyard.v1.workloads_pb2 import Service, Task

STEPS = ("create_apply", "decide", "assign_apply", "status", "status_apply")


class _KV:
    """What a watch event's kv carries."""

    __slots__ = ("key", "mod_revision", "value")

    def __init__(self, key: bytes, value: bytes | None, revision: int) -> None:
        self.key, self.value, self.mod_revision = key, value, revision


class _Event:
    __slots__ = ("kv", "type")

    def __init__(self, kv: _KV) -> None:
        self.kv, self.type = kv, 0  # a put


def _ordering() -> Callable[[list[Task]], list[Task]]:
    """How the loop under test orders a round's backlog (older trees: the view's order)."""
    by_service = getattr(scheduler_loop, "by_service", None)
    return by_service if by_service is not None else (lambda tasks: tasks)


def _apply(store: Store, state: ClusterState, ops: Sequence[Op], revision: int) -> int:
    """The writes as the view takes them from the watch: decoded, then put."""
    events = []
    for op in ops:
        revision += 1
        key = op.key.encode()
        _, _, record_id = key.rpartition(b"/")
        events.append(store._event(TASKS, record_id.decode(), _Event(_KV(key, op.value, revision))))
    for event in events:
        state._put(TASKS, state.tasks, event.id, event.value)
    state.revision = revision
    return revision


def _cluster(
    store: Store, nodes: int, services: int, per_service: int
) -> tuple[ClusterState, list[Task]]:
    state = ClusterState(store)
    for index in range(nodes):
        node = Node(id=f"node{index:05d}")
        node.spec.name, node.spec.availability = node.id, NodeSpec.ACTIVE
        node.status.state = NodeStatus.READY
        node.description.resources.nano_cpus = 64 * 10**9
        node.description.resources.memory_bytes = 256 << 30
        node.network.address = "127.0.0.1"
        state._put(NODES, state.nodes, node.id, node)
    tasks = []
    for index in range(services):
        service = Service(id=f"svc{index:03d}")
        service.spec.name = service.id
        service.spec.task.container.image = "busybox"
        service.spec.task.container.command.extend(["sleep", "86400"])
        service.spec.replicated.replicas = per_service
        state._put(SERVICES, state.services, service.id, service)
        tasks += [new_task(service, slot + 1) for slot in range(per_service)]
    return state, tasks


async def measure(nodes: int, services: int, per_service: int) -> dict[str, float]:
    """Milliseconds of CPU per task of each step."""
    store = Store(["127.0.0.1:1"])  # never connected: ops are built, not sent
    state, tasks = _cluster(store, nodes, services, per_service)
    seconds = dict.fromkeys(STEPS, 0.0)
    creates = [store.put_op(TASKS, t.id, t, expect=0) for t in tasks]
    started = time.process_time()
    revision = _apply(store, state, creates, 10)
    seconds["create_apply"] = time.process_time() - started
    loop = scheduler_loop.SchedulingLoop(store, state)
    loop._infos = {node_id: loop._build(node_id) for node_id in state.nodes}
    tracker, order = state.track(task_ids=True), _ordering()
    while state.pending_task_ids:
        loop._refresh(tracker.take())
        started = time.process_time()
        pending = order([state.tasks[i] for i in state.pending_task_ids])
        ops, _ = loop._decide(pending[: scheduler_loop.MAX_ROUND_TASKS])
        applied = time.process_time()
        revision = _apply(store, state, ops, revision)
        seconds["decide"] += applied - started
        seconds["assign_apply"] += time.process_time() - applied
    writer = StatusWriter(store, state)
    started = time.process_time()
    for task in list(state.tasks.values()):
        report = TaskStatusReport(task_id=task.id)
        report.status.state, report.status.message = TaskStatus.RUNNING, "started"
        writer.accept(task.node_id, report)
    reports, writer._pending = writer._pending, {}
    _, ops = writer._updated(reports)
    applied = time.process_time()
    _apply(store, state, ops, revision)
    seconds["status"] = applied - started
    seconds["status_apply"] = time.process_time() - applied
    if state.task_counts["running"] != len(tasks):
        raise SystemExit(f"not every task RUNNING: {dict(state.task_counts)}")
    per_task = {step: 1e3 * value / len(tasks) for step, value in seconds.items()}
    per_task["total"] = sum(per_task.values())
    return per_task


def _child(args: argparse.Namespace, pythonpath: str) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    command = [sys.executable, __file__, "--once", "--nodes", str(args.nodes)]
    command += ["--services", str(args.services), "--per-service", str(args.per_service)]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


def _line(name: str, result: dict[str, Any]) -> str:
    return f"{name}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items()) + " ms/task"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--per-service", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(measure(args.nodes, args.services, args.per_service))))
        return
    subprocess.run(["uptime"], check=False)
    mine: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    for _ in range(args.rounds):
        if args.baseline:
            base.append(_child(args, args.baseline))
            print(_line("baseline", base[-1]))
        mine.append(_child(args, ""))
        print(_line("this tree", mine[-1]))
    subprocess.run(["uptime"], check=False)
    print(f"medians of {args.rounds} round(s):")
    for key in (*STEPS, "total"):
        now = statistics.median(r[key] for r in mine)
        if base:
            then = statistics.median(r[key] for r in base)
            print(f"  {key}: {now:.4f} vs {then:.4f} ms/task ({now / then:.2f}x)")
        else:
            print(f"  {key}: {now:.4f} ms/task")


if __name__ == "__main__":
    main()
