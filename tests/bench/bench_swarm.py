"""Workloads benchmark: 100 replicas of busybox `sleep 3600` on real runc, dockyard vs Docker Swarm.

    python tests/bench/bench_swarm.py [--replicas 100] [--runs 3] [--agents 1] [--timeout 1800]
                                      [--profile DIR] [--baseline PYTHONPATH]

Run as root. Starts a private docker-registry with busybox pushed to it, a
dockyard controller (embedded etcd) and --agents runc agents (separate
`dockyard-agent run` processes, each with its own state dir and cgroup parent),
and, for the baseline, a private dockerd in swarm mode (`docker swarm init
--advertise-addr 127.0.0.1`) when none runs; the Docker side is skipped with a
message when dockerd is not installed, or when a running dockerd is already
in a swarm. Both sides get the image from the same registry, pulled once
before timing, and use the same stop grace period (--stop-grace, 0s by default).

Per run, each side measures:
  up    seconds from `service create --replicas N` to N tasks running
        (dockyard: the controller's running count and N containers running on the agents;
         docker: `docker service ls` N/N and N containers in `docker ps`)
  down  seconds from `service scale NAME=0` to 0 running containers,
  gone  ... and to no containers at all (dockyard: `Containers.List(all)` empty on every agent;
        docker: `docker ps -a` empty)
The service is then removed and the next run starts from an empty node.
Before each side's up the bench waits (up to --settle seconds, 30 by default) for the
machine's CPUs to be under 25 % busy over a second, so that no side starts while the
side before it is still tearing down (Swarm's clean-up goes on after `docker ps -a` is
empty).
With --baseline PYTHONPATH (a directory holding another tree's `dockyard` package,
e.g. main's), a second controller + agent run that code, and each run measures
this tree and the baseline (in turn first and second) then Swarm, one after another
(ratios of each are printed).
With --profile DIR, each dockyard up is profiled (tests/bench/upprofile.py: py-spy of
the agent and the controller, processes at once, CPU per process, per-task phases); the
agent then logs at info level.
Prints the medians, ratios dockyard/docker, and cleans up everything
(swarm left, dockerd stopped if started here), also on Ctrl-C and --timeout.
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
    spawn,
    start_agent,
    start_registry,
    stop_process,
    wait_for,
)
from upprofile import PHASES, UpProfile, wait_for_quiet

POLL = 0.25


class Dockyard:
    def __init__(
        self,
        args: argparse.Namespace,
        root: Path,
        registry: str,
        cleanup: Cleanup,
        pythonpath: str = "",
    ) -> None:
        self.pythonpath = pythonpath
        self.args = args
        self.root = root
        self.registry = registry
        self.cleanup = cleanup
        self.image = f"{registry}/library/busybox:latest"

    def start(self) -> None:
        """Start the controller and the agents (with `pythonpath`'s code, if given)."""
        saved = os.environ.get("PYTHONPATH")
        if self.pythonpath:
            os.environ["PYTHONPATH"] = self.pythonpath
        try:
            self._start()
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved

    def _start(self) -> None:
        import grpc

        from dockyard.v1 import containers_pb2_grpc, control_pb2_grpc, images_pb2_grpc
        from dockyard.v1.control_pb2 import ListNodesRequest
        from dockyard.v1.images_pb2 import PullImageRequest
        from dockyard.v1.types_pb2 import NodeStatus

        self.controller = f"127.0.0.1:{free_port()}"
        (self.root / "logs").mkdir(parents=True)
        self.controller_proc = proc = spawn(
            [
                str(BIN / "dockyard-controller"),
                "run",
                "--http-listen",
                "",
                "--insecure",
                "--listen",
                self.controller,
                "--state-dir",
                str(self.root / "controller"),
                "--log-level",
                "warning",
            ],
            self.root / "logs" / "controller.log",
        )
        self.cleanup.add("controller", lambda: stop_process(proc, 30))
        self.channel = grpc.insecure_channel(self.controller)
        self.cleanup.add("controller channel", self.channel.close)
        self.control = control_pb2_grpc.ControlStub(self.channel)

        def nodes_ready(count: int) -> bool:
            if proc.poll() is not None:
                raise SystemExit(
                    "controller exited: "
                    + (self.root / "logs" / "controller.log").read_text()[-2000:]
                )
            try:
                nodes = self.control.ListNodes(ListNodesRequest(), timeout=5).nodes
            except grpc.RpcError:
                return False
            return sum(n.status.state == NodeStatus.READY for n in nodes) >= count

        wait_for(lambda: nodes_ready(0), "the controller", 60, 0.2)
        self.cgroup_parent = f"dockyard-bench-swarm-{secrets.token_hex(3)}"
        self.cleanup.add("cgroup parent", lambda: remove_cgroup(self.cgroup_parent))
        self.agents = []
        self.agent_dirs = []
        for index in range(self.args.agents):
            address, state = start_agent(
                self.root / "agents",
                f"bench-node-{index + 1}",
                self.controller,
                self.registry,
                f"{self.cgroup_parent}/node{index + 1}",
                self.cleanup,
                log_level="info" if self.args.profile else "warning",
            )
            self.agent_dirs.append(state)
            channel = grpc.insecure_channel(address)
            self.cleanup.add("agent channel", channel.close)
            self.agents.append(containers_pb2_grpc.ContainersStub(channel))
            for _ in images_pb2_grpc.ImagesStub(channel).Pull(
                PullImageRequest(image=self.image), timeout=120
            ):
                pass
        wait_for(lambda: nodes_ready(self.args.agents), f"{self.args.agents} nodes READY", 60)

    def cli(self, *args: str) -> None:
        subprocess.run(
            [str(BIN / "dockyard"), "-H", self.controller, *args],
            check=True,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env=dict(
                os.environ,
                DOCKYARD_CONFIG=str(self.root / "cli"),
                **({"PYTHONPATH": self.pythonpath} if self.pythonpath else {}),
            ),
        )

    def containers(self) -> tuple[int, int]:
        """(running, all) containers over the agents."""
        from dockyard.v1.containers_pb2 import ListContainersRequest

        running = total = 0
        for stub in self.agents:
            for record in stub.List(ListContainersRequest(all=True), timeout=30).containers:
                total += 1
                running += record.state.status == "running"
        return running, total

    def service_running(self, name: str) -> int:
        from dockyard.v1.control_pb2 import ListServicesRequest

        summaries = self.control.ListServices(ListServicesRequest(names=[name]), timeout=30)
        return sum(s.running for s in summaries.services)

    def profiler(self) -> UpProfile | None:
        if not self.args.profile:
            return None
        return UpProfile(
            Path(self.args.profile) / self.root.name,
            {"agent": _pid_of(self.agent_dirs[0]), "controller": self.controller_proc.pid},
            self.agent_dirs[0].parent / f"{self.agent_dirs[0].name}.log",
            self.cgroup_parent,
        )

    def tasks(self, name: str) -> list[Any]:
        from dockyard.v1.control_pb2 import ListTasksRequest

        return list(self.control.ListTasks(ListTasksRequest(services=[name]), timeout=30).tasks)

    def run_once(self, name: str, replicas: int, limit: float) -> dict[str, float]:
        from dockyard.v1.control_pb2 import GetServiceRequest

        profile = self.profiler()
        if profile is not None:
            profile.begin(name)
        start = time.monotonic()
        grace = self.args.stop_grace
        self.cli(
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            str(replicas),
            "--stop-grace-period",
            grace,
            self.image,
            "sleep",
            "3600",
        )
        wait_for(
            lambda: self.service_running(name) >= replicas and self.containers()[0] >= replicas,
            f"dockyard: {replicas} running",
            limit,
            POLL,
        )
        up = time.monotonic() - start
        if profile is not None:
            service = self.control.GetService(GetServiceRequest(service=name), timeout=30)
            report = profile.end(self.tasks(name), service)
            phases = report["phases"]
            print(
                f"    profile ({profile.out}/{name}.json): cpu {report['cpu_s']}; "
                f"at most {report['processes'].get('runc_max')} runc at once, the first at "
                f"{report['processes'].get('first_runc_at')} s; "
                f"{report['processes'].get('idle_cpu_s')} CPU-s idle; tasks (first-last s) "
                + ", ".join(
                    f"{p} {phases[p + '_at']['first']}-{phases[p + '_at']['last']}"
                    for p in PHASES
                    if p + "_at" in phases
                ),
                flush=True,
            )
            print(
                "    timeline (from the create, every 0.5 s: machine busy % / agent CPUs / "
                "runc processes): "
                + " ".join(
                    f"{t:.1f}:{100 * m:.0f}/{a:.2f}/{r}"
                    for t, m, a, r in report["processes"].get("timeline", [])
                ),
                flush=True,
            )
        start = time.monotonic()
        self.cli("service", "scale", "-d", f"{name}=0")
        wait_for(
            lambda: self.service_running(name) == 0 and self.containers()[0] == 0,
            "dockyard: 0 running",
            limit,
            POLL,
        )
        down = time.monotonic() - start
        wait_for(lambda: self.containers()[1] == 0, "dockyard: no containers", limit, POLL)
        gone = time.monotonic() - start
        self.cli("service", "rm", name)
        return {"up": up, "down": down, "gone": gone}


def _pid_of(state_dir: Path) -> int:
    """The agent process whose command line names its state dir."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(state_dir).encode() in cmdline and any(b"dockyard-agent" in a for a in cmdline):
                return int(entry.name)
    raise RuntimeError(f"no agent process for {state_dir}")


class Swarm:
    def __init__(self, docker: Docker, grace: str) -> None:
        self.docker = docker
        self.grace = grace
        self.image = f"{docker.registry}/library/busybox:latest"

    def start(self, cleanup: Cleanup) -> bool:
        state = self.docker.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
        if state != "inactive":
            self.docker.why_not = f"the running dockerd is already in swarm mode ({state})"
            print(f"Docker baseline skipped: {self.docker.why_not}; not touching it")
            return False
        if not self.docker.started and self.docker.docker("ps", "-aq").stdout.strip():
            print("note: the running dockerd has other containers; `gone` counts only ours")
        self.docker.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        cleanup.add(
            "swarm",
            lambda: self.docker.docker("swarm", "leave", "--force", check=False, timeout=120),
        )
        self.docker.docker("pull", "-q", self.image)
        return True

    def replicas(self, name: str) -> str:
        return self.docker.docker(
            "service", "ls", "--filter", f"name={name}", "--format", "{{.Replicas}}"
        ).stdout.strip()

    def containers(self, name: str, all: bool = False) -> int:
        args = ["ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}"]
        return len(self.docker.docker(*args, *(["-a"] if all else [])).stdout.split())

    def run_once(self, name: str, replicas: int, limit: float) -> dict[str, float]:
        start = time.monotonic()
        self.docker.docker(
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            str(replicas),
            "--stop-grace-period",
            self.grace,
            self.image,
            "sleep",
            "3600",
        )
        wait_for(
            lambda: (
                self.replicas(name).startswith(f"{replicas}/{replicas}")
                and self.containers(name) >= replicas
            ),
            f"swarm: {replicas} running",
            limit,
            POLL,
        )
        up = time.monotonic() - start
        start = time.monotonic()
        self.docker.docker("service", "scale", "-d", f"{name}=0")
        wait_for(lambda: self.containers(name) == 0, "swarm: 0 running", limit, POLL)
        down = time.monotonic() - start
        try:
            wait_for(
                lambda: self.containers(name, all=True) == 0, "swarm: no containers", limit, POLL
            )
            gone = time.monotonic() - start
        except TimeoutError:
            gone = float("nan")
        self.docker.docker("service", "rm", name)
        wait_for(
            lambda: self.containers(name, all=True) == 0, "swarm: service removed", limit, POLL
        )
        return {"up": up, "down": down, "gone": gone}


def settle(args: argparse.Namespace) -> None:
    """Start each side's timed up on a machine the side before has finished with."""
    if args.settle <= 0:
        return
    waited, busy = wait_for_quiet(limit=args.settle)
    if waited > 1.5:
        print(f"    (waited {waited:.1f} s for a quiet machine: {busy:.0%} busy)", flush=True)


def main() -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", type=int, default=1, help="runc agent processes")
    parser.add_argument(
        "--wait-timeout", type=float, default=300, help="limit for each convergence, seconds"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="global limit, seconds")
    parser.add_argument(
        "--stop-grace",
        default="0s",
        help="--stop-grace-period on both sides (a duration: 0s, 1s, ...)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=30,
        help="before each side's up, wait up to this many seconds for the CPUs to be under "
        "25%% busy over 1 s (0: do not wait)",
    )
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker baseline")
    parser.add_argument("--profile", default="", help="profile each dockyard up into this dir")
    parser.add_argument(
        "--baseline", default="", help="PYTHONPATH of a tree to compare with (e.g. main's)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or shutil.which("conmon") is None:
        print("bench_swarm needs root, runc and conmon", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-swarm-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    started = time.monotonic()
    try:
        registry = start_registry(root / "registry", cleanup)
        build_and_push("busybox", f"{registry}/library/busybox:latest", root / "build.log")
        dockyard = Dockyard(args, root / "dockyard", registry, cleanup)
        dockyard.start()
        base = None
        if args.baseline:
            base = Dockyard(args, root / "baseline", registry, cleanup, args.baseline)
            base.start()
            print(f"baseline: a second controller + agent with PYTHONPATH={args.baseline}")
        docker = Docker(root / "docker", registry, cleanup)
        swarm = None
        if args.no_docker:
            print("Docker baseline skipped: --no-docker")
        elif docker.start():
            swarm = Swarm(docker, args.stop_grace)
            if not swarm.start(cleanup):
                swarm = None
        print(
            f"dockyard: 1 controller + {args.agents} runc agent process(es); "
            f"{args.replicas} replicas of busybox `sleep 3600`, "
            f"--stop-grace-period {args.stop_grace} on both sides, "
            f"{args.runs} runs each"
        )
        results: dict[str, list[dict[str, float]]] = {"dockyard": [], "baseline": [], "swarm": []}
        for run in range(args.runs):
            # This tree and the baseline swap places every run: the first one runs
            # right after Swarm's teardown (containerd still cleaning up) and the load
            # of a shared machine drifts.
            sides = (("dockyard", dockyard), ("baseline", base))
            for key, side in sides if run % 2 == 0 else sides[::-1]:
                if side is None:
                    continue
                settle(args)
                r = side.run_once(f"bench{run}", args.replicas, args.wait_timeout)
                results[key].append(r)
                print(
                    f"  run {run + 1} {key}: up {r['up']:.1f} s, down {r['down']:.1f} s, "
                    f"gone {r['gone']:.1f} s   [{os.getloadavg()[0]:.1f}]",
                    flush=True,
                )
            if swarm is not None:
                settle(args)
                r = swarm.run_once(f"bench{run}", args.replicas, args.wait_timeout)
                results["swarm"].append(r)
                print(
                    f"  run {run + 1} swarm:    up {r['up']:.1f} s, down {r['down']:.1f} s, "
                    f"gone {r['gone']:.1f} s   [{os.getloadavg()[0]:.1f}]",
                    flush=True,
                )
        print(f"\nmedians of {args.runs} ({args.replicas} replicas):")
        summary = {}
        for phase, text in (
            ("up", "create -> all running"),
            ("down", "scale 0 -> 0 running"),
            ("gone", "scale 0 -> no containers"),
        ):
            ours = median([r[phase] for r in results["dockyard"]])
            base = median([r[phase] for r in results["swarm"]])
            old = median([r[phase] for r in results["baseline"]])
            summary[phase] = {
                "dockyard_s": round(ours, 2),
                "swarm_s": round(base, 2) if results["swarm"] else None,
                "baseline_s": round(old, 2) if results["baseline"] else None,
            }
            line = f"  {text:26} dockyard {ours:6.1f} s"
            if results["swarm"]:
                line += f"   docker swarm {base:6.1f} s   ratio {ratio(ours, base)}"
            if results["baseline"]:
                line += f"   baseline {old:6.1f} s"
                if results["swarm"]:
                    line += f" ({ratio(old, base)} of swarm)"
                line += f"   dockyard/baseline {ratio(ours, old)}"
            print(line)
        print(json.dumps({"agents": args.agents, "replicas": args.replicas, **summary}))
        print(f"total {time.monotonic() - started:.0f} s")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchTimeout, TimeoutError) as exc:
        print(f"\nbench_swarm: {exc}; cleaning up", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
