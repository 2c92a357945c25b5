"""Micro-benchmark: a container's overlay unmount, synced against `volatile`, while
another process writes to the same filesystem.

    python tests/bench/bench_volatile.py [--layers 40] [--rounds 3] [--writer-mb 8]

Run as root. In a temp dir on the filesystem of the temp dir (where the agent's state
lives by default: the same filesystem as the host's other writers here), each round
mounts --layers overlays through `ContainerLayer` (the runtime's own code), each first
synced (`volatile=False`) then volatile, writes one small file in each (as a container
does), and times each `umount`. A writer process meanwhile dirties --writer-mb MB on the
same filesystem every 20 ms (0: no writer): overlayfs' `sync_fs` at a synced unmount
syncs the whole upper filesystem, so it waits for that writer's data; a volatile
overlay skips it. Prints the medians and p90s per mode and round. Removes every mount
and file it made, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _start_writer(root: Path, megabytes: int) -> subprocess.Popen[bytes]:
    """A process of its own (no GIL shared with the timing) rewriting four files of
    `megabytes` MB in turn, every 20 ms: dirty pages nobody syncs."""
    script = (
        "i=0; while :; do "
        f'dd if=/dev/zero of="$0/dirty-$((i % 4))" bs=1M count={megabytes} status=none; '
        "i=$((i + 1)); sleep 0.02; done"
    )
    return subprocess.Popen(["sh", "-c", script, str(root)], start_new_session=True)


def _round(base: Path, lower: Path, layers: int, volatile: bool) -> list[float]:
    from dockyard.agent.runtime.runc.rootfs import ContainerLayer

    made = [ContainerLayer([lower], base / f"c{i}", volatile=volatile) for i in range(layers)]
    took: list[float] = []
    try:
        for layer in made:
            layer.target.parent.mkdir(parents=True)
            layer.mount_blocking()
            (layer.target / "out").write_text("x\n")
            start = time.perf_counter()
            layer.unmount_blocking()
            took.append((time.perf_counter() - start) * 1e3)
    finally:
        for layer in made:
            if layer.target.exists():
                layer.unmount_blocking()
            shutil.rmtree(layer.target.parent, ignore_errors=True)
    return took


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writer-mb", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_volatile needs root (mount)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-volatile-"))
    writer: subprocess.Popen[bytes] | None = None
    try:
        lower = root / "lower"
        lower.mkdir()
        (lower / "etc").mkdir()
        if args.writer_mb:
            writer = _start_writer(root, args.writer_mb)
        print(f"load {os.getloadavg()[0]:.1f}; writer {args.writer_mb} MB per 20 ms")
        for rnd in range(1, args.rounds + 1):
            for volatile in (False, True):
                took = _round(root / f"r{rnd}-{volatile}", lower, args.layers, volatile)
                mode = "volatile" if volatile else "synced  "
                print(
                    f"round {rnd} {mode} unmount median {statistics.median(took):7.2f} ms"
                    f"  p90 {_p90(took):7.2f} ms  max {max(took):7.2f} ms"
                )
    finally:
        if writer is not None:
            writer.kill()
            writer.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
