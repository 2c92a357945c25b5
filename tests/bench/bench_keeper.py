"""The leader's lease renewals as the keeper sees them, from a busy controller process.

    python tests/bench/bench_keeper.py [--seconds 60] [--rounds 2] [--ttl 3]
        [--baseline PYTHONPATH] [--tree PYTHONPATH]

One etcd; each run is a process that wins a term (`Leadership`, the controller's own)
and runs a "leader loop" that keeps its event loop busy in pure Python (50 ms slices,
as tens of thousands of tasks to plan would), for `--seconds`. What it reports: the
keeper's renewal times (ask to the key checked, as the keeper measured them: p50, p99,
max), the renewals it counted, and the terms lost (`Leadership.terms` - 1). With
`--baseline DIR` the runs alternate with that tree's code (`PYTHONPATH=DIR`), same
etcd; load is what the host has (run `stress-ng --cpu 3` beside it). A keeper thread
(main's `LeaseKeeper`) is timed around its successful `_refresh` calls; a keeper that
keeps `renewals` (the keeper process tried in docs/reliability.md, "The lease keeper in
a process of its own") reports its own times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import tree_env

BUSY_SLICE = 0.05


async def _probe(endpoint: str, seconds: float, ttl: int) -> dict[str, Any]:
    from dockyard.common import logging as dlogging
    from dockyard.controller.leadership import Leadership, LeaseKeeper
    from dockyard.controller.store import Store

    dlogging.configure("warning", json=True)  # on stderr: the terms' losses, read after

    took: list[float] = []
    if not _keeper_reports(LeaseKeeper):
        _time_thread_keeper(LeaseKeeper, took)
    store = Store([endpoint], f"/probe-{os.getpid()}")
    await store.connect()
    leadership = Leadership(store, f"probe-{os.getpid()}", "127.0.0.1:1", ttl=ttl)
    keepers: list[Any] = []

    async def lead(fence: object) -> None:
        keeper = leadership._keeper
        if keeper is not None and hasattr(keeper, "renewals"):
            keepers.append(keeper)
        while True:
            until = time.monotonic() + BUSY_SLICE
            while time.monotonic() < until:
                sum(i * i for i in range(200))
            await asyncio.sleep(0)

    task = asyncio.create_task(leadership.run(lead))
    await asyncio.sleep(seconds)
    leadership.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, 10)
    for keeper in keepers:
        took.extend(keeper.renewals)
    await store.close()
    return {"took": took, "terms": leadership.terms}


def _keeper_reports(keeper_class: type) -> bool:
    return "renewals" in keeper_class.__init__.__code__.co_names


def _time_thread_keeper(keeper_class: Any, took: list[float]) -> None:
    """main's keeper is a thread: time its successful `_refresh` calls from outside."""
    real = keeper_class._refresh

    def timed(self: Any) -> bool:
        before, asked = self.expires, time.monotonic()
        result = real(self)
        if self.expires != before:
            took.append(time.monotonic() - asked)
        return bool(result)

    keeper_class._refresh = timed


def _one(endpoint: str, seconds: float, ttl: int, pythonpath: str) -> dict[str, Any]:
    env = tree_env(pythonpath)
    out = subprocess.run(
        [sys.executable, __file__, "--child", endpoint, str(seconds), str(ttl)],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def _summary(name: str, runs: list[dict[str, Any]], loads: list[float]) -> None:
    took = sorted(t for run in runs for t in run["took"])
    lost = [run["terms"] - 1 for run in runs]
    if not took:
        print(f"{name}: no renewal counted; terms lost per run {lost}")
        return
    p99 = took[min(len(took) - 1, int(0.99 * len(took)))]
    print(
        f"{name}: renewals {len(took)}, p50 {statistics.median(took) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms; terms lost per run {lost}"
        f" [load {min(loads):.1f}-{max(loads):.1f}]"
    )


async def _main(args: argparse.Namespace) -> None:
    from dockyard.common.etcd_server import EtcdServer

    with tempfile.TemporaryDirectory(prefix="bench-keeper-") as folder:
        etcd = EtcdServer(Path(folder) / "data", log_path=Path(folder) / "etcd.log")
        await etcd.start()
        try:
            sides = [("this tree", args.tree)]
            if args.baseline:
                sides.insert(0, ("baseline", args.baseline))
            results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
            loads: dict[str, list[float]] = {name: [] for name, _ in sides}
            for round_ in range(args.rounds):
                for name, path in sides:
                    loads[name].append(os.getloadavg()[0])
                    run = await asyncio.to_thread(_one, etcd.endpoint, args.seconds, args.ttl, path)
                    loads[name].append(os.getloadavg()[0])
                    results[name].append(run)
                    print(f"round {round_ + 1} {name}: {len(run['took'])} renewals", flush=True)
            for name, _ in sides:
                _summary(name, results[name], loads[name])
        finally:
            await etcd.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        endpoint, seconds, ttl = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(asyncio.run(_probe(endpoint, seconds, ttl))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttl", type=int, default=3)
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument("--tree", default="", help="PYTHONPATH of this tree's code (a snapshot)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
