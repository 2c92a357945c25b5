"""`run true` through the agent vs raw `runc run`, two trees alternating in one session.

    python tests/bench/bench_alternate.py --baseline-dir /work/main \\
        [--baseline-python /work/main/.venv/bin/python] [--baseline-pythonpath DIR]
        [--rounds 8] [--runs 15]

Run as root. Each round runs `tests/bench/bench_agent.py --runs N --skip
detach,pull,memory,cli,nodocker --phases` once for this tree (this interpreter) and once
for the baseline tree (its own interpreter, or this one with `--baseline-pythonpath`, a
`dockyard/` directory of symlinks into another checkout as `bench_scale.py --baseline`
uses), the order swapped every round, so that load bursts of this shared machine hit
both alike. Prints each run (load, ratio to raw runc, the per-call medians, the phase
lines) and the medians of each tree's ratios; `uptime` before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CALLS = ("Create", "Start", "Wait", "Remove")


def run_once(python: str, cwd: Path, runs: int, pythonpath: str) -> tuple[float, dict[str, float]]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    skip = "detach,pull,memory,cli,nodocker"
    out = subprocess.run(
        [python, "tests/bench/bench_agent.py", "--runs", str(runs), "--skip", skip, "--phases"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    ).stdout
    ours = float(re.findall(r"Create\+Start\+Wait\+Remove\s+([\d.]+) ms", out)[0])
    raw = float(re.findall(r"raw runc run \(same rootfs\)\s+([\d.]+) ms", out)[0])
    calls = {k: float(v) for k, v in re.findall(r"(Create|Start|Wait|Remove) ([\d.]+) ms", out)}
    for line in out.splitlines():
        if re.match(r"\s+(start|finalize|settle|remove)\s+total", line):
            print("      ", line.strip())
    return ours / raw, {"ours": ours, "raw": raw, **calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-dir", type=Path, required=True)
    parser.add_argument("--baseline-python", default=sys.executable)
    parser.add_argument("--baseline-pythonpath", default="")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    trees = {
        "baseline": (args.baseline_python, args.baseline_dir, args.baseline_pythonpath),
        "this": (sys.executable, REPO, ""),
    }
    results: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in trees}
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            load = Path("/proc/loadavg").read_text().split()[0]
            ratio, numbers = run_once(*trees[name][:2], args.runs, trees[name][2])
            results[name].append((ratio, numbers))
            detail = ", ".join(f"{k} {numbers[k]:.1f}" for k in ("ours", "raw", *CALLS))
            print(f"round {r} {name:8s} load {load:>5s} ratio {ratio:.2f}  ({detail} ms)")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for name, rows in results.items():
        calls = ", ".join(f"{k} {statistics.median(n[k] for _, n in rows):.1f}" for k in CALLS)
        ratios = " ".join(f"{x:.2f}" for x, _ in rows)
        print(
            f"{name:8s} median ratio {statistics.median(x for x, _ in rows):.3f}"
            f"  per call {calls} ms  (ratios: {ratios})"
        )


if __name__ == "__main__":
    main()
