"""Where `run true`'s time goes: one runc agent's `Containers.Run` and raw `runc run`,
on a timeline of the kernel's process events.

    python tests/bench/bench_run_trace.py [--runs 20] [--gap 0.1]

Run as root. Starts a private registry and one runc agent as `bench_agent.py` does,
then runs `true` --runs times each way, interleaved (a Run call, --gap seconds, raw
`runc run` of a bundle on the same rootfs, --gap): with ftrace's sched_process_exec,
_fork and _exit tracepoints on and a mark written to trace_marker around each call.
Prints, per side, the median time from the call's start to each event (conmon's exec,
runc's, `runc init`'s, runc's re-exec of its sealed copy, the container's exec and
exit, runc's and conmon's exits, the call's end), and the spans between them: what the
agent adds to runc, step by step. ftrace's state (tracing on, the three events, the
buffer size) is restored afterwards; tracefs is mounted at /sys/kernel/tracing when it
is not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agent import Bench
from benchlib import Cleanup, install_limits, median

TRACING = Path("/sys/kernel/tracing")
EVENTS = ("sched_process_exec", "sched_process_fork", "sched_process_exit")
_LINE = re.compile(r"-(\d+)\s+\[\d+\].*?\s(\d+\.\d+): (\w+): (.*)")


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """ftrace's process events on (and cleared) inside; its earlier state after."""
    if not (TRACING / "trace_marker").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
    saved = {
        "tracing_on": (TRACING / "tracing_on").read_text(),
        "buffer_size_kb": (TRACING / "buffer_size_kb").read_text(),
        **{e: (TRACING / f"events/sched/{e}/enable").read_text() for e in EVENTS},
    }
    try:
        (TRACING / "buffer_size_kb").write_text("8192")
        for event in EVENTS:
            (TRACING / f"events/sched/{event}/enable").write_text("1")
        (TRACING / "trace").write_text("")
        (TRACING / "tracing_on").write_text("1")
        yield
    finally:
        (TRACING / "tracing_on").write_text(saved["tracing_on"])
        for event in EVENTS:
            (TRACING / f"events/sched/{event}/enable").write_text(saved[event])
        (TRACING / "buffer_size_kb").write_text(saved["buffer_size_kb"])


def _key(event: str, rest: str) -> str | None:
    """The timeline's name for one trace line (None: not one it shows)."""
    if event == "sched_process_exec":
        name = re.search(r"filename=(\S+)", rest)
        path = name[1] if name else ""
        if path.endswith("/conmon"):
            return "conmon exec"
        if path.endswith("/runc"):
            return "runc exec"
        if path == "/proc/self/exe":
            return "runc init exec"
        if path.startswith("/dev/fd/"):
            return "runc re-exec of its copy"
        if path == "/bin/true":
            return "container exec"
        return None
    if event == "sched_process_exit" and "group_dead=true" in rest:
        comm = re.search(r"comm=(\S+)", rest)
        name = comm[1] if comm else ""
        return {"true": "container exit", "runc": "runc exit", "conmon": "conmon exit"}.get(name)
    return None


def parse(trace: str, roots: set[int]) -> dict[str, list[dict[str, float]]]:
    """Per side, per round: event name -> ms since the round's start mark (first seen;
    runc's exit: the last, after its helpers'). Only the processes descended from
    `roots` (this process and the agent) count: the machine's others are left out."""
    rounds: dict[str, list[dict[str, float]]] = {"RUN": [], "RAW": []}
    ours = set(roots)
    current: dict[str, float] | None = None
    start = 0.0
    for line in trace.splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        pid, at, event, rest = int(m[1]), float(m[2]) * 1e3, m[3], m[4]
        if event == "sched_process_fork":
            child = re.search(r"child_pid=(\d+)", rest)
            if pid in ours and child:
                ours.add(int(child[1]))
            continue
        if event == "tracing_mark_write":
            side, _, what = rest.partition(" ")
            if what == "start":
                current, start = {}, at
                rounds[side].append(current)
            elif current is not None:
                current["call end"] = at - start
                current = None
            continue
        key = _key(event, rest) if current is not None and pid in ours else None
        if current is not None and key is not None and (key == "runc exit" or key not in current):
            current[key] = at - start
    return rounds


def report(rounds: dict[str, list[dict[str, float]]]) -> None:
    for side, label in (("RUN", "Containers.Run"), ("RAW", "raw runc run")):
        kept = rounds[side][1:]  # the first warms up
        keys = {k for r in kept for k in r}
        order = sorted(keys, key=lambda k: median([r[k] for r in kept if k in r]))
        print(f"\n{label}, medians of {len(kept)} (ms since the call's start):")
        previous = 0.0
        for key in order:
            at = median([r[key] for r in kept if key in r])
            print(f"  {key:26s} {at:7.1f}   (+{at - previous:5.1f})")
            previous = at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-trace-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    bench = Bench(
        argparse.Namespace(skip={"pull", "nodocker"}, phases=False, runs=args.runs), root, cleanup
    )
    try:
        bench.setup()
        bench.run_marks = {}
        bundle = bench.raw_bundle("true")
        with tracing(), (TRACING / "trace_marker").open("w", buffering=1) as marker:
            for i in range(args.runs + 1):
                time.sleep(args.gap)
                marker.write("RUN start\n")
                bench.run_call("true")
                marker.write("RUN end\n")
                time.sleep(args.gap)
                marker.write("RAW start\n")
                bench.raw_runc(rid=f"trace-{i}", bundle=bundle)
                marker.write("RAW end\n")
            trace = (TRACING / "trace").read_text()
        agent = subprocess.run(
            ["pgrep", "-f", f"dockyard-agent.*{root}"], capture_output=True, text=True
        ).stdout.split()
        report(parse(trace, {os.getpid(), *map(int, agent)}))
        return 0
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
