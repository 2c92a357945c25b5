"""`run true` through the agent vs raw `runc run`, two trees alternating in one session.

    python tests/bench/bench_alternate.py --baseline-dir /work/main \\
        [--baseline-python /work/main/.venv/bin/python] [--baseline-pythonpath DIR]
        [--rounds 8] [--runs 15] [--same-script] [--cli]

Run as root. Each round runs `tests/bench/bench_agent.py --runs N --skip
detach,pull,memory,cli,nodocker --phases` once for this tree (this interpreter) and once
for the baseline tree (its own interpreter, or this one with `--baseline-pythonpath`, a
`dockyard/` directory of symlinks into another checkout as `bench_scale.py --baseline`
uses), the order swapped every round, so that load bursts of this shared machine hit
both alike. Prints each run (load, ratio to raw runc, the per-call medians, the phase
lines) and the medians of each tree's ratios; `uptime` before and after. A tree with
`Containers.Run` also prints that one call's ratio. `--same-script` runs this tree's
bench_agent.py for both trees (each with its own package, agent and CLI: the baseline's
interpreter), so that sections this tree added are measured on the baseline too;
`--cli` adds the whole `dockyard -H AGENT run --rm IMAGE true` process.
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


def run_once(
    python: str, cwd: Path, runs: int, pythonpath: str, script: Path | None, cli: bool
) -> tuple[float, dict[str, float]]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    skip = "detach,pull,memory,nodocker" + ("" if cli else ",cli")
    bench = str(script) if script is not None else "tests/bench/bench_agent.py"
    out = subprocess.run(
        [python, bench, "--runs", str(runs), "--skip", skip, "--phases", "--cli-runs", str(runs)],
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
    one = re.findall(r"Run \(one call\)\s+([\d.]+) ms", out)  # a tree with `Containers.Run`
    if one:
        calls["one_call"] = float(one[0])
        calls["one_call_ratio"] = float(one[0]) / raw
    cli_run = re.findall(r"run --rm IMAGE true\s+([\d.]+) ms", out)
    if cli_run:
        calls["cli_run_rm"] = float(cli_run[0])
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
    parser.add_argument(
        "--same-script",
        action="store_true",
        help="run this tree's bench_agent.py for the baseline too (its package, its agent)",
    )
    parser.add_argument(
        "--cli", action="store_true", help="also time `dockyard -H AGENT run --rm IMAGE true`"
    )
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
            script = REPO / "tests/bench/bench_agent.py" if args.same_script else None
            ratio, numbers = run_once(*trees[name][:2], args.runs, trees[name][2], script, args.cli)
            results[name].append((ratio, numbers))
            detail = ", ".join(f"{k} {numbers[k]:.1f}" for k in ("ours", "raw", *CALLS))
            if "cli_run_rm" in numbers:
                detail += f", CLI run --rm {numbers['cli_run_rm']:.1f}"
            if "one_call" in numbers:
                detail += f", Run {numbers['one_call']:.1f} = {numbers['one_call_ratio']:.2f}x"
            print(f"round {r} {name:8s} load {load:>5s} ratio {ratio:.2f}  ({detail} ms)")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for name, rows in results.items():
        calls = ", ".join(f"{k} {statistics.median(n[k] for _, n in rows):.1f}" for k in CALLS)
        ratios = " ".join(f"{x:.2f}" for x, _ in rows)
        print(
            f"{name:8s} median ratio {statistics.median(x for x, _ in rows):.3f}"
            f"  per call {calls} ms  (ratios: {ratios})"
        )
        cli = [n["cli_run_rm"] for _, n in rows if "cli_run_rm" in n]
        if cli:
            print(
                f"{name:8s} CLI run --rm IMAGE true: median {statistics.median(cli):.1f} ms"
                f"  (each: {' '.join(f'{x:.0f}' for x in cli)})"
            )
        one = [n["one_call_ratio"] for _, n in rows if "one_call_ratio" in n]
        if one:
            print(
                f"{name:8s} one Run call: median ratio {statistics.median(one):.3f}"
                f"  (ratios: {' '.join(f'{x:.2f}' for x in one)})"
            )


if __name__ == "__main__":
    main()
