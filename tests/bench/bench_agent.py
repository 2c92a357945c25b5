"""Node daemon benchmark: one runc agent's API against raw runc and Docker, on this machine.

    python tests/bench/bench_agent.py [--runs 20] [--pulls 3] [--containers 20] [--cli-runs 10]
                                      [--timeout 900] [--skip pull,memory,...]

Run as root. Starts a private docker-registry (busybox and a 5 x 20 MB "big"
image pushed to it), one `dockyard-agent run --runtime runc` with its own state
dir and `--cgroup-parent`, and, for the Docker baselines, a private dockerd when
none is running (skipped with a message when dockerd is not installed). Measures:

  run      `true` through the agent's API (Create+Start+Wait+Remove, as `docker run --rm`)
           vs raw `runc run` of a bundle on the same rootfs (and `docker run --rm`, for reference)
  detach   Create+Start of a detached `sleep` through the API vs raw `runc run -d`
  pull     Images.Pull of the 100 MB 5-layer image vs `docker pull` from the same registry
  memory   conmon PSS/RSS per running container (N sleeps) vs containerd-shim per container
  cli      `dockyard --help` and `dockyard -H AGENT ps` vs `docker --help` and `docker ps`

Every ratio is ours / baseline, both measured in this run. Cleans up every
process, container, mount, cgroup and the temp dir, also on Ctrl-C and when
--timeout runs out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BIN,
    BenchTimeout,
    Cleanup,
    Docker,
    build_and_push,
    free_port,
    install_limits,
    median,
    ratio,
    remove_cgroup,
    run_timed,
    smaps_rollup,
    start_agent,
    start_registry,
)

SECTIONS = ("run", "detach", "pull", "memory", "cli")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, cleanup: Cleanup) -> None:
        self.args = args
        self.root = root
        self.cleanup = cleanup
        self.results: dict[str, Any] = {}
        self.raw_cgroup = f"dockyard-bench-raw-{secrets.token_hex(3)}"
        cleanup.add("raw runc", self.raw_cleanup)

    # -- set-up ----------------------------------------------------------------

    def setup(self) -> None:
        import grpc

        from dockyard.v1 import agent_pb2_grpc, containers_pb2_grpc, images_pb2_grpc

        self.registry = start_registry(self.root / "registry", self.cleanup)
        self.busybox = f"{self.registry}/library/busybox:latest"
        self.big = f"{self.registry}/bench/big:latest"
        build_and_push("busybox", self.busybox, self.root / "build.log")
        if "pull" not in self.args.skip:
            build_and_push(
                "big", self.big, self.root / "build.log", "--layers", "5", "--layer-size", "20M"
            )
        self.cgroup_parent = f"dockyard-bench-{secrets.token_hex(3)}"
        # No controller: the agent's own API is what is measured; its session retries quietly.
        self.agent, self.state = start_agent(
            self.root / "agents",
            "bench-agent",
            f"127.0.0.1:{free_port()}",
            self.registry,
            self.cgroup_parent,
            self.cleanup,
            log_level="debug" if self.args.phases else "warning",
        )
        self.channel = grpc.insecure_channel(self.agent)
        self.cleanup.add("grpc channel", self.channel.close)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.agent_api = agent_pb2_grpc.AgentStub(self.channel)
        self.pull(self.busybox)
        self.docker = Docker(self.root / "docker", self.registry, self.cleanup)
        if "nodocker" in self.args.skip:
            print("Docker baseline skipped: --skip nodocker")
        elif self.docker.start():
            self.docker.docker("pull", "-q", self.busybox, timeout=120)

    def pull(self, ref: str) -> None:
        from dockyard.v1.images_pb2 import PullImageRequest

        last = None
        for event in self.images.Pull(PullImageRequest(image=ref), timeout=300):
            last = event
        if last is None or not last.done:
            raise RuntimeError(f"pull of {ref} ended without `done`: {last}")

    def create(self, *command: str) -> str:
        from dockyard.v1.containers_pb2 import CreateContainerRequest

        return str(
            self.containers.Create(
                CreateContainerRequest(image=self.busybox, command=list(command)), timeout=60
            ).id
        )

    run_marks: dict[str, list[float]]

    def version_call(self) -> float:
        """One `Agent.GetVersion`: the seconds of a call that does no work."""
        from dockyard.v1.types_pb2 import GetVersionRequest

        start = time.perf_counter()
        self.agent_api.GetVersion(GetVersionRequest(), timeout=60)
        return time.perf_counter() - start

    def run_call(self, *command: str) -> float:
        """One `Containers.Run` (create, start, output, exit, removal); its seconds."""
        from dockyard.v1.containers_pb2 import CreateContainerRequest

        start = time.perf_counter()
        request = CreateContainerRequest(image=self.busybox, command=list(command))
        answers = []
        marks: dict[str, float] = {}
        for answer in self.containers.Run(request, timeout=60):
            answers.append(answer)
            marks[answer.WhichOneof("kind")] = time.perf_counter()
        took = time.perf_counter() - start
        # what the one call's answers split it into, as the four calls' medians are
        previous = start
        for name in ("created", "exit", "removed"):
            self.run_marks.setdefault(name, []).append(marks[name] - previous)
            previous = marks[name]
        if answers[-2].exit.exit_code != 0 or not answers[-1].removed:
            raise RuntimeError(f"Run of {command}: {answers[-2:]}")
        return took

    def remove(self, cid: str) -> None:
        from dockyard.v1.containers_pb2 import RemoveContainerRequest

        self.containers.Remove(RemoveContainerRequest(container=cid, force=True), timeout=60)

    # -- raw runc bundle -----------------------------------------------------------

    def raw_bundle(self, *command: str) -> Path:
        """A bundle of our own: the agent's config.json for this command, its rootfs, our cgroup."""
        cid = self.create(*command)
        self.cleanup.add("bundle source container", lambda: self.remove(cid))
        source = self.state / "runtime" / "containers" / cid / "bundle"
        spec = json.loads((source / "config.json").read_text())
        rootfs = Path(spec["root"]["path"])
        if not rootfs.is_absolute():
            rootfs = source / rootfs
        bundle = self.root / f"raw-bundle-{command[0]}"
        bundle.mkdir()
        spec["root"]["path"] = str(rootfs.resolve())
        spec["process"]["terminal"] = False
        spec["linux"].pop("cgroupsPath", None)
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def raw_runc(self, *args: str, rid: str, bundle: Path) -> float:
        raw_root = self.root / "raw-runc"
        spec = json.loads((bundle / "config.json").read_text())
        spec["linux"]["cgroupsPath"] = f"/{self.raw_cgroup}/{rid}"
        (bundle / "config.json").write_text(json.dumps(spec))
        return run_timed(["runc", "--root", str(raw_root), "run", *args, "-b", str(bundle), rid])

    def raw_delete(self, rid: str) -> None:
        raw_root = self.root / "raw-runc"
        subprocess.run(
            ["runc", "--root", str(raw_root), "kill", rid, "KILL"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        subprocess.run(
            ["runc", "--root", str(raw_root), "delete", "-f", rid],
            capture_output=True,
            check=False,
            timeout=30,
        )

    def raw_cleanup(self) -> None:
        raw_root = self.root / "raw-runc"
        if raw_root.is_dir():
            for entry in raw_root.iterdir():
                self.raw_delete(entry.name)
        remove_cgroup(self.raw_cgroup)

    # -- sections -------------------------------------------------------------------

    def bench_run(self) -> None:
        from dockyard.v1.containers_pb2 import ContainerRef, RemoveContainerRequest

        n = self.args.runs
        bundle = self.raw_bundle("true")
        ours: list[float] = []
        raw: list[float] = []
        docker: list[float] = []
        calls: dict[str, list[float]] = {"Create": [], "Start": [], "Wait": [], "Remove": []}
        one_call: list[float] = []  # `Containers.Run`: the four in one streaming call
        floor: list[float] = []  # a GetVersion call: the gRPC round trip alone
        self.run_marks = {}
        # Interleaved, so that other load on the machine hits every side alike.
        for i in range(n + 1):  # the first round warms up
            start = time.perf_counter()
            cid = self.create("true")
            t1 = time.perf_counter()
            self.containers.Start(ContainerRef(container=cid), timeout=60)
            t2 = time.perf_counter()
            exit_info = self.containers.Wait(ContainerRef(container=cid), timeout=60)
            t3 = time.perf_counter()
            self.containers.Remove(RemoveContainerRequest(container=cid), timeout=60)
            took = time.perf_counter() - start
            if i:
                for name, d in zip(
                    calls, (t1 - start, t2 - t1, t3 - t2, start + took - t3), strict=True
                ):
                    calls[name].append(d)
            if exit_info.exit_code != 0:
                raise RuntimeError(f"`true` exited {exit_info.exit_code}: {exit_info.error}")
            raw_took = self.raw_runc(rid=f"raw-true-{i}", bundle=bundle)
            if i:
                ours.append(took)
                raw.append(raw_took)
            if hasattr(self.containers, "Run"):  # absent in a baseline tree
                took = self.run_call("true")
                if i:
                    one_call.append(took)
            floor.append(self.version_call())
            if self.docker.available:
                took = run_timed(
                    ["docker", "run", "--rm", "--network", "none", self.busybox, "true"],
                    self.docker.env,
                )
                if i:
                    docker.append(took)
        self.report_run(ours, raw, docker, one_call, calls)
        print(f"  a GetVersion call (the gRPC round trip alone) {ms(median(floor[1:]))}")

    def report_run(
        self,
        ours: list[float],
        raw: list[float],
        docker: list[float],
        one_call: list[float],
        calls: dict[str, list[float]],
    ) -> None:
        n = len(ours)
        m_ours, m_raw, m_docker = median(ours), median(raw), median(docker)
        print(f"\n(a) run `true`, median of {n}:")
        print(f"  agent API Create+Start+Wait+Remove {ms(m_ours)}")
        print(f"  raw runc run (same rootfs)         {ms(m_raw)}   ratio {ratio(m_ours, m_raw)}")
        # raw runc's own time swings with how idle the machine was just before (this
        # VM's idle CPUs): each round's pair ran back to back, so its ratio is the
        # fairer figure
        paired = median([o / r for o, r in zip(ours, raw, strict=True)])
        print(f"  ratio of each round's pair, median {paired:.2f}x")
        if docker:
            print(
                f"  docker run --rm --network none    {ms(m_docker)}   "
                f"(reference; agent/docker {ratio(m_ours, m_docker)})"
            )
        if one_call:
            m_one = median(one_call)
            print(f"  agent API Run (one call)           {ms(m_one)}   ratio {ratio(m_one, m_raw)}")
            paired_one = median([o / r for o, r in zip(one_call, raw, strict=True)])
            print(
                f"  Run: ratio of each round's pair, median {paired_one:.2f}x (`dockyard run --rm`)"
            )
            print(
                "  Run's answers after the previous one: "
                + ", ".join(f"{k} {median(v[1:]) * 1e3:.1f} ms" for k, v in self.run_marks.items())
            )
            self.results["run_call"] = {
                "agent_ms": m_one * 1e3,
                "ratio_vs_runc": m_one / m_raw,
                "paired_ratio": paired_one,
            }
        print("  per call: " + ", ".join(f"{k} {median(v) * 1e3:.1f} ms" for k, v in calls.items()))
        if self.args.phases:
            print_phases(self.root / "agents" / "bench-agent.log")
        self.results["run"] = {
            "agent_ms": m_ours * 1e3,
            "raw_runc_ms": m_raw * 1e3,
            "docker_ms": m_docker * 1e3 if docker else None,
            "ratio_vs_runc": m_ours / m_raw,
            "paired_ratio": paired,
        }

    def bench_detach(self) -> None:
        from dockyard.v1.containers_pb2 import ContainerRef

        n = self.args.runs
        bundle = self.raw_bundle("sleep", "3600")
        ours: list[float] = []
        raw: list[float] = []
        for i in range(n + 1):  # interleaved; the first round warms up
            start = time.perf_counter()
            cid = self.create("sleep", "3600")
            self.containers.Start(ContainerRef(container=cid), timeout=60)
            took = time.perf_counter() - start
            self.remove(cid)
            rid = f"raw-sleep-{i}"
            raw_took = self.raw_runc("-d", rid=rid, bundle=bundle)
            self.raw_delete(rid)
            if i:
                ours.append(took)
                raw.append(raw_took)
        m_ours, m_raw = median(ours), median(raw)
        print(f"\n(b) create+start of a detached `sleep`, median of {n}:")
        print(f"  agent API Create+Start            {ms(m_ours)}")
        print(f"  raw runc run -d                   {ms(m_raw)}   ratio {ratio(m_ours, m_raw)}")
        self.results["detach"] = {
            "agent_ms": m_ours * 1e3,
            "raw_runc_ms": m_raw * 1e3,
            "ratio_vs_runc": m_ours / m_raw,
        }

    def bench_pull(self) -> None:
        import grpc

        from dockyard.v1.images_pb2 import RemoveImageRequest

        def agent_rmi() -> None:
            try:
                self.images.Remove(RemoveImageRequest(image=self.big, force=True), timeout=60)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        n = self.args.pulls
        ours: list[float] = []
        docker: list[float] = []
        for _ in range(n):  # interleaved: agent, then docker
            agent_rmi()
            start = time.perf_counter()
            self.pull(self.big)
            ours.append(time.perf_counter() - start)
            agent_rmi()
            if self.docker.available:
                self.docker.docker("rmi", "-f", self.big, check=False)
                start = time.perf_counter()
                self.docker.docker("pull", "-q", self.big, timeout=300)
                docker.append(time.perf_counter() - start)
                self.docker.docker("rmi", "-f", self.big, check=False)
        leftover = sum(
            f.lstat().st_size
            for f in (self.state / "images").rglob("*")
            if f.is_file() and not f.is_symlink()
        )
        m_ours, m_docker = median(ours), median(docker)
        print(f"\n(c) pull of a 100 MiB 5-layer image from the local registry, median of {n}:")
        print(
            f"  agent Images.Pull                 {m_ours:8.2f} s   ({100 / m_ours:.0f} MiB/s)"
            f"   runs {', '.join(f'{t:.2f}' for t in ours)}"
        )
        if docker:
            print(
                f"  docker pull                       {m_docker:8.2f} s   "
                f"({100 / m_docker:.0f} MiB/s)   runs {', '.join(f'{t:.2f}' for t in docker)}"
                f"   ratio {ratio(m_ours, m_docker)}"
            )
        else:
            print(f"  docker pull: skipped ({self.docker.why_not or 'no dockerd'})")
        print(
            f"  (agent image store after the last remove, busybox still in it: "
            f"{leftover / 2**20:.1f} MiB)"
        )
        self.results["pull"] = {
            "agent_s": m_ours,
            "docker_s": m_docker if docker else None,
            "ratio_vs_docker": m_ours / m_docker if docker else None,
        }

    def bench_memory(self) -> None:
        import psutil

        from dockyard.v1.containers_pb2 import ContainerRef

        count = self.args.containers
        agent_pid = next(
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"]
            and "--state-dir" in p.info["cmdline"]
            and str(self.state) in p.info["cmdline"]
        )
        agent_rss_before = psutil.Process(agent_pid).memory_info().rss
        ids = []
        try:
            start = time.perf_counter()
            for _ in range(count):
                cid = self.create("sleep", "3600")
                ids.append(cid)
                self.containers.Start(ContainerRef(container=cid), timeout=60)
            started = time.perf_counter() - start
            time.sleep(1)
            mems = []
            for cid in ids:
                pid = int((self.state / "runtime" / "containers" / cid / "conmon.pid").read_text())
                mems.append(smaps_rollup(pid))
            agent_rss_after = psutil.Process(agent_pid).memory_info().rss
        finally:
            for cid in ids:
                self.remove(cid)
        pss = sum(m["Pss"] for m in mems) / count
        rss = sum(m["Rss"] for m in mems) / count
        print(f"\n(d) memory per running container ({count} detached sleeps):")
        print(
            f"  conmon (agent)                    PSS {pss:7.0f} KiB  RSS {rss:7.0f} KiB"
            f"   (agent RSS {agent_rss_before / 2**20:.0f} -> {agent_rss_after / 2**20:.0f}"
            f" MiB; {count} started in {started:.1f} s)"
        )
        self.results["memory"] = {
            "conmon_pss_kib": pss,
            "conmon_rss_kib": rss,
            "agent_rss_mib": agent_rss_after / 2**20,
        }
        if not self.docker.available:
            print(f"  containerd-shim: skipped ({self.docker.why_not or 'no dockerd'})")
            return
        dids = []
        try:
            start = time.perf_counter()
            for _ in range(count):
                dids.append(
                    self.docker.docker(
                        "run", "-d", "--network", "none", self.busybox, "sleep", "3600"
                    ).stdout.strip()
                )
            dstarted = time.perf_counter() - start
            time.sleep(1)
            shims = []
            for did in dids:
                pid = int(self.docker.docker("inspect", "-f", "{{.State.Pid}}", did).stdout)
                shim = psutil.Process(pid).ppid()
                if "shim" not in " ".join(psutil.Process(shim).cmdline()):
                    raise RuntimeError(f"parent of container {did[:12]} is not a shim")
                shims.append(shim)
            dmems = [smaps_rollup(pid) for pid in set(shims)]
        finally:
            if dids:
                self.docker.docker("rm", "-f", *dids, check=False, timeout=120)
        per = len(set(shims))
        dpss = sum(m["Pss"] for m in dmems) / count
        drss = sum(m["Rss"] for m in dmems) / count
        print(
            f"  containerd-shim-runc-v2 (docker)  PSS {dpss:7.0f} KiB  RSS {drss:7.0f} KiB"
            f"   ({per} shims for {count} containers; started in {dstarted:.1f} s)"
        )
        print(f"  ratio conmon/shim: PSS {ratio(pss, dpss)}, RSS {ratio(rss, drss)}")
        self.results["memory"].update(shim_pss_kib=dpss, shim_rss_kib=drss)

    def bench_cli(self) -> None:
        n = self.args.cli_runs
        dockyard = str(BIN / "dockyard")

        def timed(*cmd: str, env: dict[str, str] | None = None) -> float:
            times = [run_timed(cmd, env) for _ in range(n + 1)]
            return median(times[1:])

        env = dict(os.environ, DOCKYARD_CONFIG=str(self.root / "cli-config"))
        help_ours = timed(dockyard, "--help", env=env)
        ps_ours = timed(dockyard, "-H", self.agent, "ps", env=env)
        run_ours = timed(dockyard, "-H", self.agent, "run", "--rm", self.busybox, "true", env=env)
        print(f"\n(e) CLI wall time, median of {n}:")
        line_help = f"  dockyard --help                   {ms(help_ours)}"
        line_ps = f"  dockyard -H AGENT ps              {ms(ps_ours)}"
        self.results["cli"] = {
            "help_ms": help_ours * 1e3,
            "ps_ms": ps_ours * 1e3,
            "run_rm_ms": run_ours * 1e3,
        }
        print(f"  dockyard -H AGENT run --rm IMAGE true {ms(run_ours)}")
        if self.docker.available:
            help_docker = timed("docker", "--help", env=self.docker.env)
            ps_docker = timed("docker", "ps", env=self.docker.env)
            line_help += (
                f"   docker --help {ms(help_docker)}   ratio {ratio(help_ours, help_docker)}"
            )
            line_ps += f"   docker ps     {ms(ps_docker)}   ratio {ratio(ps_ours, ps_docker)}"
            self.results["cli"].update(
                docker_help_ms=help_docker * 1e3, docker_ps_ms=ps_docker * 1e3
            )
        print(line_help)
        print(line_ps)


def print_phases(agent_log: Path) -> None:
    """Medians of the runtime's `container.phases` debug lines (milliseconds per phase)."""
    by_op: dict[str, dict[str, list[float]]] = {}
    for line in agent_log.read_text(errors="replace").splitlines():
        if '"container.phases"' not in line:
            continue
        entry = json.loads(line)
        phases = by_op.setdefault(entry["op"], {})
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("op",):
                phases.setdefault(key, []).append(float(value))
    print("  runtime phases (agent's container.phases, medians, ms):")
    for op, phases in by_op.items():
        parts = ", ".join(f"{k} {median(v):.1f}" for k, v in phases.items())
        print(f"    {op:9} {parts}")


def keep_logs(root: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for log in root.rglob("*.log"):
        shutil.copy(log, target / log.name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of (a) and (b)")
    parser.add_argument("--pulls", type=int, default=3, help="pulls in (c)")
    parser.add_argument("--containers", type=int, default=20, help="sleeps in (d)")
    parser.add_argument("--cli-runs", type=int, default=10, help="runs of each CLI command")
    parser.add_argument("--timeout", type=float, default=900, help="global limit, seconds")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated: {', '.join(SECTIONS)}, nodocker"
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="run the agent at debug and print the medians of its per-phase timings",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="copy the daemons' logs to ./bench-agent-logs before cleaning up",
    )
    args = parser.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if os.geteuid() != 0 or shutil.which("runc") is None or shutil.which("conmon") is None:
        print("bench_agent needs root, runc and conmon", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-agent-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    if args.keep_logs:
        cleanup.add("logs", lambda: keep_logs(root, Path("bench-agent-logs")))
    bench = Bench(args, root, cleanup)
    started = time.monotonic()
    try:
        bench.setup()
        for section in SECTIONS:
            if section not in args.skip:
                getattr(bench, f"bench_{section}")()
        print(
            "\n"
            + json.dumps(
                {
                    k: {n: round(v, 2) if isinstance(v, float) else v for n, v in section.items()}
                    for k, section in bench.results.items()
                }
            )
        )
        print(f"total {time.monotonic() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchTimeout, TimeoutError) as exc:
        print(f"\nbench_agent: {exc}; cleaning up", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    import signal as _signal

    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    sys.exit(main())
