"""Network map sends at full size: bytes and CPU per send when one task changes.

    python tests/bench/bench_network_map.py [--nodes 1000] [--tasks 30000]
        [--services 30] [--overlay-services 0 [--move-overlay]] [--sends 5] [--rounds 3]
        [--baseline PYTHONPATH]

Builds the leader's view in memory (no etcd, no agents): N nodes with routes, M
RUNNING tasks with addresses spread over the services and nodes (the first
``--overlay-services`` services also on one overlay network), and a `NetworkMapper`
with every node's session open (greeted: each holds its first map). Then, ``--sends``
times, one task moves (a new address: a restart) and the mapper's loop sends every
session its map. Per send: the controller's CPU from the change to the last message
posted, the bytes of every message, the CPU to serialize them all (what gRPC does per
message), and one agent's CPU to take its message (parse, and apply a delta). Each
round runs in a child process, ``--baseline`` (another tree, such as main's) first,
then this tree, alternating; medians. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

CHILD = "--child"


def build_state(args: argparse.Namespace) -> Any:
    from dockyard.common.states import TaskState
    from dockyard.controller.state import ClusterState
    from dockyard.controller.store import NETWORKS, NODES, SERVICES, TASKS
    from dockyard.v1.networks_pb2 import Network
    from dockyard.v1.types_pb2 import Node
    from dockyard.v1.workloads_pb2 import Service, Task

    state = ClusterState(None)
    overlay = Network(id="ov1", subnet="10.100.0.0/16", vni=4300)
    overlay.spec.name = "front"
    state._put(NETWORKS, state.networks, overlay.id, overlay)
    for i in range(args.nodes):
        node = Node(id=f"node-{i:05d}")
        node.network.subnet = f"10.{128 + i // 256}.{i % 256}.0/24"
        node.network.address = f"172.16.{i // 256}.{i % 256}"
        state._put(NODES, state.nodes, node.id, node)
    for s in range(args.services):
        service = Service(id=f"svc-{s:04d}")
        service.spec.name = f"service-{s:04d}"
        if s < args.overlay_services:
            service.spec.task.networks.add(network_id="ov1")
        state._put(SERVICES, state.services, service.id, service)
    for t in range(args.tasks):
        node_index, service_index = t % args.nodes, t % args.services
        task = Task(id=f"task-{t:06d}", service_id=f"svc-{service_index:04d}")
        task.node_id = f"node-{node_index:05d}"
        task.desired_state = TaskState.RUNNING
        task.status.state = TaskState.RUNNING
        subnet = f"10.{128 + node_index // 256}.{node_index % 256}"
        task.status.address = f"{subnet}.{2 + t // args.nodes}"
        if service_index < args.overlay_services:
            task.networks.add(network_id="ov1", address=f"10.100.{t // 250}.{2 + t % 250}")
        state._put(TASKS, state.tasks, task.id, task)
    return state


async def child(args: argparse.Namespace) -> dict[str, Any]:
    from dockyard.controller import network_map
    from dockyard.controller.store import TASKS
    from dockyard.v1.dispatcher_pb2 import DispatcherMessage, NetworkMap
    from dockyard.v1.workloads_pb2 import Task

    state = build_state(args)
    posted: dict[str, DispatcherMessage] = {}
    done = asyncio.Event()

    def post(node_id: str, message: DispatcherMessage) -> bool:
        posted[node_id] = message
        if len(posted) == len(state.nodes):
            done.set()
        return True

    sessions = list(state.nodes)
    kwargs: dict[str, Any] = {}
    if "takes_deltas" in inspect.signature(network_map.NetworkMapper).parameters:
        kwargs["takes_deltas"] = lambda node_id: True
    mapper = network_map.NetworkMapper(state, post, lambda: sessions, **kwargs)
    for node in state.nodes.values():  # every session opens: its first map
        mapper.send_now(node)
    watched = sessions[len(sessions) // 2]  # one agent, holding its first map
    held = NetworkMap()
    held.CopyFrom(posted[watched].network)
    greeting_bytes = posted[watched].ByteSize()
    posted.clear()
    running = asyncio.create_task(mapper.run())
    await asyncio.sleep(0.1)
    rng = random.Random(7)
    sends: list[dict[str, float]] = []
    try:
        for n in range(args.sends):
            await asyncio.sleep(network_map.SEND_INTERVAL + 0.05)  # the loop's pause
            posted.clear()
            done.clear()
            moved = Task()
            moved.CopyFrom(state.tasks[f"task-{moved_task(args, rng):06d}"])
            moved.status.address = f"10.99.{n // 250}.{2 + n % 250}"  # restarted elsewhere
            for held_address in moved.networks:
                held_address.address = f"10.101.{n // 250}.{2 + n % 250}"
            started = time.process_time()
            state._put(TASKS, state.tasks, moved.id, moved)
            for event in state._subscribers:  # as the view's watch does after a response
                event.set()
            await asyncio.wait_for(done.wait(), 120)
            send_cpu = time.process_time() - started
            measured, held = measure_send(posted, watched, held)
            sends.append({"send_cpu_s": send_cpu, **measured})
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    result = {k: statistics.median(s[k] for s in sends) for k in sends[0]}
    result["first_map_bytes"] = greeting_bytes
    result["held_services"] = len(held.services)
    return result


def moved_task(args: argparse.Namespace, rng: random.Random) -> int:
    """The number of the task that moves: any, or with ``--move-overlay`` one of a
    service on the overlay network."""
    while True:
        number = rng.randrange(args.tasks)
        if not args.move_overlay or number % args.services < args.overlay_services:
            return number


def measure_send(posted: dict[str, Any], watched: str, held: Any) -> tuple[dict[str, float], Any]:
    """The messages of one send: their bytes, the CPU to serialize them all, and the
    ``watched`` agent's CPU to take its own (with the map it holds now)."""
    from dockyard.v1.dispatcher_pb2 import DispatcherMessage

    try:
        from dockyard.common.map_delta import apply_map_delta
    except ImportError:  # a tree without deltas
        apply_map_delta = None
    started = time.process_time()
    data = [m.SerializeToString() for m in posted.values()]
    serialize_cpu = time.process_time() - started
    mine = posted[watched].SerializeToString()
    started = time.process_time()
    for _ in range(20):  # one agent's take, 20 times (one is too short to time)
        taken = DispatcherMessage.FromString(mine).network
        if apply_map_delta is not None and taken.base_version:
            whole = apply_map_delta(held, taken)
        else:
            whole = taken
    agent_cpu = (time.process_time() - started) / 20
    measured = {
        "serialize_cpu_s": serialize_cpu,
        "bytes_total": float(sum(len(d) for d in data)),
        "bytes_per_node": float(statistics.median(len(d) for d in data)),
        "agent_take_ms": agent_cpu * 1000,
    }
    return measured, whole


def run_child(args: argparse.Namespace, pythonpath: str) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    argv = [sys.executable, __file__, CHILD, *sys.argv[1:]]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--overlay-services", type=int, default=0)
    parser.add_argument(
        "--move-overlay", action="store_true", help="the task that moves is on the overlay"
    )
    parser.add_argument("--sends", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return
    print(f"[{uptime()}]")
    bases: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for round_number in range(args.rounds):
        if args.baseline:
            bases.append(run_child(args, args.baseline))
            print(f"round {round_number + 1} baseline: {bases[-1]}", flush=True)
        ours.append(run_child(args, ""))
        print(f"round {round_number + 1} this tree: {ours[-1]}", flush=True)
    print(f"[{uptime()}]")
    print(f"medians of {args.rounds} round(s) (each the median of {args.sends} sends):")
    for key in ours[0]:
        mine = statistics.median(r[key] for r in ours)
        if not bases:
            print(f"  {key}: {mine:.6g}")
            continue
        base = statistics.median(r[key] for r in bases)
        ratio = f" ({mine / base:.4f}x)" if base else ""
        print(f"  {key}: {mine:.6g} vs {base:.6g}{ratio}")


if __name__ == "__main__":
    main()
