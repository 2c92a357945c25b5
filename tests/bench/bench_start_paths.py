"""Where a container start's process executions go: conmon and its runtime shim against raw runc.

    python tests/bench/bench_start_paths.py [--runs 30] [--timeout 600]

Run as root. Builds a one-binary rootfs (the host's static busybox, `true`) and times,
for each path, from the first exec until the container's process has been started
(raw `runc run`: until it has also exited and been deleted, the floor the agent's
`run true` is compared with):

  runc run              raw `runc run` of `true` (create + start + wait + delete)
  runc run --detach     raw, one runc, no monitor
  runc create + start   raw, two runc processes (what conmon + `runc start` did)
  conmon + sh shim      conmon double-forking away (the launch before start3), an sh shim
                        turning conmon's `create` into `run --detach` (the agents before upall)
  conmon --sync + shim  conmon stays our child (one fork fewer, no pid file), its answer
                        read on the loop, the same shim
  conmon --sync + fifo  the agent's launch (agent/runtime/runc/conmon.py): conmon runs
                        `runc create`, the agent releases the init through runc's exec fifo
                        (direct.start_created): no shell, one runc

Each path's CPU is printed too: this process's own cpuacct cgroup (Python, conmon, the
shim, runc's parent) plus the container's cgroup (`runc init`; not for raw `runc run`,
which deletes it). The paths are interleaved per iteration (path 1, 2, ..., 1, 2, ...),
so load bursts of this shared machine hit every path alike; medians, quartiles, ratios
to raw `runc run` and `uptime` are printed. Everything is made under a temp dir and its own cgroup
parent, and removed at the end, also on Ctrl-C and when --timeout runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_mounts import OwnCgroup
from benchlib import (
    BenchTimeout,
    Cleanup,
    install_limits,
    kill_processes_mentioning,
    remove_cgroup,
    umount_under,
)

from dockyard.agent.runtime.runc.conmon import (
    ConmonPaths,
    launch_conmon,
    reap_conmon,
    wait_pid_exit,
)
from dockyard.agent.runtime.runc.direct import start_created

Path_ = Callable[[str], Awaitable[float]]

# The agents before upall: conmon runs `RUNTIME [flags] create [flags] ID`, this shim
# runs `runc [flags] run --detach [flags] ID` (one runc, one shell per start).
SH_SHIM = """#!/bin/sh
swapped=
for arg do
    shift
    if [ -z "$swapped" ] && [ "$arg" = create ]; then
        swapped=1
        set -- "$@" run --detach
    else
        set -- "$@" "$arg"
    fi
done
exec {runc} "$@"
"""


def write_shim(directory: Path, runc: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "runc-run-detached"
    path.write_text(SH_SHIM.format(runc=runc))
    path.chmod(0o755)
    return path


class Paths:
    """The start paths, each timed for one container id."""

    def __init__(self, root: Path, runc: str, cgroup: str) -> None:
        self.root = root
        self.runc = runc
        self.state = root / "runc"
        self.bundle = root / "bundle"
        self.cgroup = cgroup
        self.sh_shim = write_shim(root / "sh", runc)

    def make_bundle(self) -> None:
        rootfs = self.bundle / "rootfs" / "bin"
        rootfs.mkdir(parents=True)
        busybox = shutil.which("busybox")
        if busybox is None:
            raise SystemExit("needs a static busybox on the host")
        shutil.copy2(busybox, rootfs / "busybox")
        (rootfs / "true").symlink_to("busybox")
        subprocess.run([self.runc, "spec"], cwd=self.bundle, check=True)
        config = json.loads((self.bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/true"]
        config["root"]["readonly"] = True
        config["linux"]["cgroupsPath"] = f"/{self.cgroup}/bench"
        (self.bundle / "config.json").write_text(json.dumps(config))

    def all(self) -> dict[str, Path_]:
        paths: dict[str, Path_] = {
            "runc run": self.raw_run,
            "runc run --detach": self.raw_detach,
            "runc create + start": self.raw_create_start,
        }
        shim = str(self.sh_shim)
        paths["conmon + sh shim"] = lambda cid: self.conmon(shim, cid, daemonize=True)
        paths["conmon --sync + shim"] = lambda cid: self.conmon(shim, cid, daemonize=False)
        paths["conmon --sync + fifo"] = lambda cid: self.conmon(
            self.runc, cid, daemonize=False, release=True
        )
        return paths

    async def _runc(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.runc,
            "--root",
            str(self.state),
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"runc {' '.join(args)} failed")

    async def raw_run(self, cid: str) -> float:
        t = time.perf_counter()
        await self._runc("run", "--bundle", str(self.bundle), cid)
        return time.perf_counter() - t

    async def raw_detach(self, cid: str) -> float:
        t = time.perf_counter()
        pid_file = str(self.root / f"{cid}.pid")
        await self._runc("run", "--detach", "--pid-file", pid_file, "-b", str(self.bundle), cid)
        return time.perf_counter() - t

    async def raw_create_start(self, cid: str) -> float:
        t = time.perf_counter()
        pid_file = str(self.root / f"{cid}.pid")
        await self._runc("create", "--pid-file", pid_file, "-b", str(self.bundle), cid)
        await self._runc("start", cid)
        return time.perf_counter() - t

    async def conmon(self, runtime: str, cid: str, daemonize: bool, release: bool = False) -> float:
        c = self.root / "conmon" / cid
        paths = ConmonPaths(
            bundle=self.bundle,
            log=c / "log",
            exit_dir=c / "exit",
            persist_dir=c / "persist",
            pid_file=c / "pid",
            conmon_pid_file=c / "conmon.pid",
            socket_dir=c / "sock",
            conmon_log=c / "conmon.log",
        )
        c.mkdir(parents=True)
        t = time.perf_counter()
        pid, conmon_pid = await launch_conmon(
            conmon="conmon",
            runc=runtime,
            runc_root=self.state,
            container_id=cid,
            paths=paths,
            daemonize=daemonize,
        )
        if release and not await start_created(self.state / cid, pid):
            raise RuntimeError("runc left no exec fifo")
        took = time.perf_counter() - t
        await wait_pid_exit(conmon_pid)
        reap_conmon(conmon_pid)
        return took

    def delete(self, cid: str) -> None:
        subprocess.run(
            [self.runc, "--root", str(self.state), "delete", "--force", cid],
            capture_output=True,
            check=False,
        )


def _container_cpu_ms(cgroup: str) -> float:
    """CPU of the bench container's cgroup (`runc init` once it joined it, the process)."""
    usage = Path(f"/sys/fs/cgroup/cpuacct/{cgroup}/bench/cpuacct.usage")
    try:
        return int(usage.read_text()) / 1e6
    except OSError:  # `runc run` deleted it with the container
        return 0.0


async def measure(
    paths: Paths, runs: int, own: OwnCgroup
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall ms and CPU ms (this process and its children: Python, conmon, the shim,
    runc; plus the container's cgroup) of each path, interleaved."""
    chosen = paths.all()
    times: dict[str, list[float]] = {name: [] for name in chosen}
    cpu: dict[str, list[float]] = {name: [] for name in chosen}
    for i in range(runs):
        for j, (name, run) in enumerate(chosen.items()):
            cid = f"sp{j}-{i}"
            before = own.cpu_ms()
            try:
                times[name].append(await run(cid) * 1000)
                cpu[name].append(own.cpu_ms() - before + _container_cpu_ms(paths.cgroup))
            finally:
                await asyncio.to_thread(paths.delete, cid)
    return times, cpu


def report(times: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    floor = statistics.median(times["runc run"])
    for name, values in times.items():
        q1, q2, q3 = statistics.quantiles(values, n=4)
        used = statistics.median(cpu[name])
        print(
            f"  {name:22s} median {q2:7.1f} ms  (p25 {q1:6.1f}, p75 {q3:6.1f})"
            f"  ratio to runc run {q2 / floor:5.2f}x   CPU median {used:5.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    runc = shutil.which("runc")
    if runc is None or shutil.which("conmon") is None:
        raise SystemExit("needs runc and conmon")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    cleanup = Cleanup()
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-start-"))
    cgroup = root.name
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    cleanup.add("cgroup", lambda: remove_cgroup(cgroup))
    cleanup.add("mounts", lambda: umount_under(root))
    cleanup.add("processes", lambda: kill_processes_mentioning(str(root)))
    install_limits(args.timeout)
    started = time.monotonic()
    try:
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        paths = Paths(root, runc, cgroup)
        paths.make_bundle()
        with OwnCgroup() as own:
            times, cpu = asyncio.run(measure(paths, args.runs, own))
        print(f"\nstart paths, interleaved, {args.runs} runs each:")
        report(times, cpu)
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    except BenchTimeout:
        print(f"timed out after {args.timeout}s", file=sys.stderr)
    finally:
        cleanup.run()
        print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
