"""Where a scale-up's time goes: `bench_swarm.py --profile DIR` (not a benchmark itself).

For each dockyard up it records, into DIR:
  - py-spy (raw, collapsed stacks) of the agent and the controller, when py-spy is
    installed (`pip install py-spy`); the top entries (own and cumulative) are printed;
  - the processes at once, sampled every 0.1 s: runc, conmon, and those in state R,
    among the agent's descendants (other benchmarks on the machine run their own);
  - the CPU seconds of the agent, the controller, its etcd, the conmons of the
    service (with their reaped children: the shim and `runc run`), the containers'
    cgroups (`runc init`'s work before the exec) and the machine's;
  - per task, when it reached each phase, all on this host's clock:
    created (the controller's task record), accepted / preparing / starting / running
    (the agent's `task.status` log lines, so the agent runs at info level) and stored
    (the controller's `observed_at` of RUNNING).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
PHASES = (
    "created",
    "accepted",
    "preparing",
    "made",
    "starting",
    "released",
    "running",
    "stored",
)
# The runtime's own log lines, as phases: the container made (bundle, rootfs), and
# started (conmon's `runc create` answered, the init released).
_RUNTIME_EVENTS = {b'"container.created"': "made", b'"container.started"': "released"}


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime (+ reaped children's) of a process, in seconds."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    used = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime
    return used / TICKS


def cgroup_cpu_seconds(name: str) -> float:
    """CPU seconds used in a cgroup and its descendants (v1 cpuacct, or v2), 0 if none."""
    try:
        return int(Path(f"/sys/fs/cgroup/cpuacct/{name}/cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/sys/fs/cgroup/{name}/cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    return 0.0


def machine_busy() -> float:
    """Seconds all CPUs were busy since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS


def wait_for_quiet(
    busy_below: float = 0.25, window: float = 1.0, limit: float = 30.0
) -> tuple[float, float]:
    """Wait until the machine's CPUs were less than `busy_below` busy over `window` s.

    A timed up or down that starts while the last side's teardown still runs (Swarm's
    containerd and network clean-up go on after its containers are gone) pays for it.
    Returns (seconds waited, the last window's busy share); gives up after `limit`.
    """
    cpus = os.cpu_count() or 1
    started = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(window)
        busy = (machine_busy() - before) / (window * cpus)
        waited = time.monotonic() - started
        if busy < busy_below or waited >= limit:
            return waited, busy


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def processes(root: int = 0) -> list[tuple[int, str, str]]:
    """(pid, comm, state) of every process; with `root`, only of its descendants (other
    benchmarks on a shared machine run their own runc and conmon processes)."""
    found = []
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        fields = _stat(int(entry.name))
        if fields is not None:
            found.append((int(entry.name), comm, fields[0]))
            parents[int(entry.name)] = int(fields[1])
    if not root:
        return found
    return [p for p in found if _descends(p[0], root, parents)]


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    for _ in range(8):  # agent -> conmon -> runc -> runc init: a few levels
        pid = parents.get(pid, 0)
        if pid == root:
            return True
        if pid <= 1:
            return False
    return False


class Sampler(threading.Thread):
    """Counts runc, conmon and runnable processes (the agent's descendants, when `agent`
    is given) every `interval` seconds, and how busy the machine's CPUs and the agent
    were since the sample before (fractions of all CPUs / of one CPU): an up that waits
    shows idle CPUs."""

    def __init__(self, interval: float = 0.1, agent: int = 0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.agent = agent
        # t, runc, conmon, running, machine busy (0..1 of all CPUs), agent (CPUs)
        self.samples: list[tuple[float, int, int, int, float, float]] = []
        self._halt = threading.Event()
        self.waits: collections.Counter[str] = collections.Counter()  # comm state wchan

    def run(self) -> None:
        start = last = time.monotonic()
        busy, agent, cpus = machine_busy(), self._agent_cpu(), os.cpu_count() or 1
        while not self._halt.wait(self.interval):
            now = time.monotonic()
            busy2, agent2 = machine_busy(), self._agent_cpu()
            span = max(now - last, 1e-3)
            load = (round((busy2 - busy) / span / cpus, 2), round((agent2 - agent) / span, 2))
            last, busy, agent = now, busy2, agent2
            runc = conmon = running = 0
            for pid, comm, state in processes(self.agent):
                runc += comm.startswith("runc")
                conmon += comm == "conmon"
                running += state == "R"
                if comm.startswith("runc") or (comm == "conmon" and state != "S"):
                    self.waits[f"{comm} {state} {_wchan(pid)}"] += 1
            self.samples.append((now - start, runc, conmon, running, *load))

    def _agent_cpu(self) -> float:
        return cpu_seconds(self.agent) if self.agent else 0.0

    def timeline(self, step: float = 0.5) -> list[tuple[float, float, float, int]]:
        """Per `step` seconds: (start, machine busy 0..1, agent CPUs, most runc at once)."""
        rows: list[tuple[float, float, float, int]] = []
        for i in range(int(self.samples[-1][0] / step) + 1 if self.samples else 0):
            part = [s for s in self.samples if i * step < s[0] <= (i + 1) * step]
            if part:
                rows.append(
                    (
                        i * step,
                        round(sum(s[4] for s in part) / len(part), 2),
                        round(sum(s[5] for s in part) / len(part), 2),
                        max(s[1] for s in part),
                    )
                )
        return rows

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        runc = [s[1] for s in self.samples]
        run = [s[3] for s in self.samples]
        return {
            "samples": len(self.samples),
            "runc_max": max(runc),
            "runc_mean": round(sum(runc) / len(runc), 1),
            "running_max": max(run),
            "running_mean": round(sum(run) / len(run), 1),
            "conmon_end": self.samples[-1][2],
            "runc_waits": self.waits.most_common(12),
            "timeline": self.timeline(),
            "first_runc_at": next((s[0] for s in self.samples if s[1]), None),
            "idle_cpu_s": self.idle_cpu_seconds(),
        }

    def idle_cpu_seconds(self) -> float:
        """CPU seconds the machine left idle over the samples (all CPUs): what an up
        that waits instead of working leaves unused."""
        cpus, idle, last = os.cpu_count() or 1, 0.0, 0.0
        for sample in self.samples:
            idle += max(0.0, 1.0 - sample[4]) * cpus * (sample[0] - last)
            last = sample[0]
        return round(idle, 2)


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() or "-"
    except OSError:
        return "?"


class UpProfile:
    """One up of dockyard, profiled; see the module's docstring."""

    def __init__(self, out: Path, pids: dict[str, int], agent_log: Path, cgroup: str) -> None:
        self.out = out
        self.cgroup = cgroup
        self.pids = dict(pids)
        for pid in child_pids(pids["controller"]):
            with contextlib.suppress(OSError):
                if "etcd" in Path(f"/proc/{pid}/comm").read_text():
                    self.pids["etcd"] = pid
        self.agent_log = agent_log
        self.out.mkdir(parents=True, exist_ok=True)
        self.spies: list[subprocess.Popen[bytes]] = []
        self.sampler: Sampler | None = None
        self.name = ""

    def begin(self, name: str) -> None:
        self.name = name
        self._log_offset = self.agent_log.stat().st_size if self.agent_log.exists() else 0
        self._cpu = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._busy = machine_busy()
        self._containers = cgroup_cpu_seconds(self.cgroup)
        self._wall = time.time()
        self._mono = time.monotonic()
        spy = shutil.which("py-spy")
        if spy is not None:
            for key in ("agent", "controller"):
                self.spies.append(
                    subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--nonblocking",
                            "-r",
                            "50",
                            "-f",
                            "raw",
                            "-F",
                            "-p",
                            str(self.pids[key]),
                            "-o",
                            str(self.out / f"{name}.{key}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(self.out / f"{name}.{key}.spy.log", "wb"),  # noqa: SIM115
                    )
                )
        self.sampler = Sampler(agent=self.pids["agent"])
        self.sampler.start()

    def end(self, tasks: list[Any], service: Any) -> dict[str, Any]:
        """Stop recording; `tasks`: the service's Task records (after the up), `service`
        its record (when the controller stored it: the CLI's part of the up ends there)."""
        wall = time.monotonic() - self._mono
        assert self.sampler is not None
        self.sampler.stop()
        cpu = {k: round(cpu_seconds(p) - self._cpu[k], 2) for k, p in self.pids.items()}
        conmons = [p for p, comm, _ in processes(self.pids["agent"]) if comm == "conmon"]
        cpu["conmons+children"] = round(sum(cpu_seconds(p, True) for p in conmons), 2)
        cpu["containers"] = round(cgroup_cpu_seconds(self.cgroup) - self._containers, 2)
        cpu["machine"] = round(machine_busy() - self._busy, 2)
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        self.spies.clear()
        report = {
            "run": self.name,
            "wall_s": round(wall, 2),
            "cpu_s": cpu,
            "processes": self.sampler.summary(),
            "service_stored_at": round(
                service.meta.created_at.ToNanoseconds() / 1e9 - self._wall, 2
            ),
            "phases": self._phases(tasks),
        }
        (self.out / f"{self.name}.samples.json").write_text(json.dumps(self.sampler.samples))
        (self.out / f"{self.name}.json").write_text(json.dumps(report, indent=1))
        for key in ("agent", "controller"):
            raw = self.out / f"{self.name}.{key}.txt"
            if raw.exists():
                report[f"top_{key}"] = top_entries(raw)
        return report

    def _phases(self, tasks: list[Any]) -> dict[str, Any]:
        times: dict[str, dict[str, float]] = collections.defaultdict(dict)
        for task in tasks:
            times[task.id]["created"] = task.meta.created_at.ToNanoseconds() / 1e9
            if task.status.state == 7:  # RUNNING: observed_at is when it was stored
                times[task.id]["stored"] = task.observed_at.ToNanoseconds() / 1e9
        by_prefix = {task_id[:12]: task_id for task_id in times}
        names: dict[str, str] = {}  # container id -> task id
        with (
            open(self.agent_log, "rb") as log,
            open(self.out / f"{self.name}.agent.log", "wb") as copy,
        ):
            log.seek(self._log_offset)
            for line in log:
                copy.write(line)
                with contextlib.suppress(ValueError, KeyError):
                    if b'"task.status"' in line:
                        entry = json.loads(line)
                        task_id, phase = entry["task_id"], entry["state"].lower()
                    elif (phase := _runtime_phase(line)) is not None:
                        entry = json.loads(line)
                        if "name" in entry:
                            names[entry["container_id"]] = by_prefix.get(
                                entry["name"].rsplit(".", 1)[-1], ""
                            )
                        task_id = names.get(entry["container_id"], "")
                    else:
                        continue
                    if task_id in times:
                        when = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
                        times[task_id].setdefault(phase, when)
        result: dict[str, Any] = {}
        for phase in PHASES:  # when the tasks reached it, from the create command
            at = sorted(t[phase] - self._wall for t in times.values() if phase in t)
            if at:
                result[f"{phase}_at"] = {
                    "n": len(at),
                    "first": round(at[0], 2),
                    "p50": round(at[len(at) // 2], 2),
                    "last": round(at[-1], 2),
                }
        for before, after in itertools.pairwise(PHASES):  # each step, per task
            spent = sorted(
                t[after] - t[before] for t in times.values() if after in t and before in t
            )
            if spent:
                result[f"{before}->{after}"] = {
                    "p50": round(spent[len(spent) // 2], 3),
                    "p90": round(spent[int(len(spent) * 0.9)], 3),
                    "max": round(spent[-1], 3),
                }
        return result


def _runtime_phase(line: bytes) -> str | None:
    return next((phase for key, phase in _RUNTIME_EVENTS.items() if key in line), None)


def top_entries(raw: Path, count: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The functions with the most samples, own and cumulative (percent of samples)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        samples += int(n)
        own[_short(frames[-1])] += int(n)
        for frame in {_short(f) for f in frames}:
            total[frame] += int(n)
    if not samples:
        return {}
    return {
        "samples": [("all", samples)],
        "own": [(f, round(100 * n / samples, 1)) for f, n in own.most_common(count)],
        "cumulative": [(f, round(100 * n / samples, 1)) for f, n in total.most_common(count)],
    }


def _short(frame: str) -> str:
    return frame.replace("/site-packages/", "/").split("/dockyard/")[-1]
