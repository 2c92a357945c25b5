"""Scale benchmark: N hollow nodes, M tasks (Swarm's 2015 test: 1,000 nodes, 30,000 containers).

    python tests/bench/bench_scale.py [--nodes 1000] [--tasks 30000] [--services 30]
        [--fleet-processes 4] [--profile controller.txt] [--baseline PYTHONPATH]

Starts a real controller (embedded etcd) and `--fleet-processes` `dockyard-agent
hollow` processes running N simulated agents between them (so the fleet's own CPU
does not bound the controller), creates the services, and reports: seconds until
every task is placed, stored and reported RUNNING; tasks per second; the
controller's peak RSS and CPU seconds (and etcd's, and the fleet's); p50/p99
latency of ListServices and ListNodes while it runs (on the controller's read port,
`--read-listen`, when the code under test has one). `--profile` records the
controller with py-spy during the run (raw folded stacks). `--baseline DIR` first
runs the same scenario with PYTHONPATH=DIR (another tree of the code, such as
main's) and prints the ratios. Cleans up every process and the temp dir, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1 import control_pb2_grpc
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetInfoRequest,
    ListNodesRequest,
    ListServicesRequest,
)
from dockyard.v1.types_pb2 import NodeStatus
from dockyard.v1.workloads_pb2 import ServiceSpec

BIN = Path(sys.executable).parent


ENV = dict(os.environ)


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True, env=ENV)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes and their children so far."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for each in [process, *process.children(recursive=True)]:
                times = each.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


# The floor for a read on this machine at this moment: a gRPC server in a process of
# its own that answers an empty message, sampled beside the reads (same client, same
# thread, same load): what a read costs before any of the controller's work.
FLOOR_SERVER = """
import sys
from concurrent.futures import ThreadPoolExecutor
import grpc
handler = grpc.method_handlers_generic_handler(
    "floor.Floor", {"Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")}
)
server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[handler])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def start_floor(root: Path, processes: list[subprocess.Popen[bytes]]) -> Any:
    """The floor server, and a call to it."""
    port = free_port()
    processes.append(spawn([sys.executable, "-c", FLOOR_SERVER, str(port)], root / "floor.log"))
    ping = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary("/floor.Floor/Ping")
    wait(lambda: _pings(ping), "the floor server", 30, 0.2)
    return ping


def _pings(ping: Any) -> bool:
    try:
        ping(b"", timeout=2)
        return True
    except grpc.RpcError:
        return False


def reader_pids(controller: int) -> list[int]:
    """The controller's reader process (controller/reader.py), when it has one."""
    return [
        child.pid
        for child in psutil.Process(controller).children()
        if "dockyard.controller.reader" in " ".join(child.cmdline())
    ]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait(predicate: object, what: str, timeout: float, interval: float = 0.5) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


class Sampler(threading.Thread):
    """Controller RSS and API latencies, sampled while the test runs."""

    def __init__(self, pid: int, stub: control_pb2_grpc.ControlStub, interval: float = 1.0) -> None:
        """`stub`: where the reads are sent (the read port when the controller has one);
        `interval`: seconds between two rounds of reads."""
        super().__init__(daemon=True)
        self.interval = interval
        self.process = psutil.Process(pid)
        self.stub = stub
        self.peak_rss = 0
        self.latencies: dict[str, list[float]] = {"service ls": [], "node ls": []}
        self.floor: Any = None  # a call to the floor server (FLOOR_SERVER)
        self.errors: dict[str, int] = {}
        self.http: list[tuple[str, str]] = []  # (name, URL) of HTTP reads, alternated
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            calls: list[tuple[str, Any]] = [
                ("service ls", lambda: self.stub.ListServices(ListServicesRequest(), timeout=60)),
                ("node ls", lambda: self.stub.ListNodes(ListNodesRequest(), timeout=60)),
            ]
            if self.floor is not None:
                calls.append(("floor", functools.partial(self.floor, b"", timeout=60)))
            rounds = len(self.latencies["node ls"])
            http = self.http if rounds % 2 == 0 else self.http[::-1]  # neither always first
            calls.extend((name, functools.partial(http_get, url)) for name, url in http)
            for name, call in calls:
                start = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as exc:  # counted, with the time it took to fail
                    self.errors[name] = self.errors.get(name, 0) + 1
                    print(f"  {name} failed: {exc.code().name}")
                except OSError as exc:  # an HTTP read
                    self.errors[name] = self.errors.get(name, 0) + 1
                    print(f"  {name} failed: {exc}")
                self.latencies[name].append(time.perf_counter() - start)
            self.done.wait(self.interval)


HTTP_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> None:
    """One HTTP read, its whole body read (an error status is an OSError)."""
    with HTTP_OPENER.open(url, timeout=60) as response:
        response.read()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def start_cluster(
    root: Path,
    nodes: int,
    timeout: float,
    processes: list[subprocess.Popen[bytes]],
    fleet_processes: int = 1,
    http_reads: dict[str, str] | None = None,
) -> tuple[int, Any, list[int], Any]:
    """A controller and a hollow fleet of `nodes` agents in `fleet_processes`
    processes, all READY; (controller pid, stub, the fleet's pids, a stub for the
    list reads: on --read-listen when the code under test has it). `http_reads`, when
    given, is filled with the URLs of GET /v1/services on --http-listen and, when the
    code has it, on the reader's --read-http-listen."""
    address = f"127.0.0.1:{free_port()}"
    read_address = f"127.0.0.1:{free_port()}" if has_read_port() else ""
    # The HTTP port always: its /metrics gives the status writes per task at the end.
    http_address = f"127.0.0.1:{free_port()}"
    http_flags: list[str] = ["--http-listen", http_address]
    METRICS_URL[0] = f"http://{http_address}/metrics"
    if http_reads is not None:
        http_reads["http services (controller)"] = f"http://{http_address}/v1/services"
        if has_read_port("--read-http-listen"):
            reader_http = f"127.0.0.1:{free_port()}"
            http_flags += ["--read-http-listen", reader_http]
            http_reads["http services (reader)"] = f"http://{reader_http}/v1/services"
    controller = spawn(
        [
            str(BIN / "dockyard-controller"),
            "run",
            *http_flags,
            "--listen",
            address,
            "--state-dir",
            str(root / "controller"),
            "--heartbeat-period",
            "5",
            "--log-level",
            "warning",
            "--insecure",
            "--resolve-image",
            "never",  # hollow agents: no registry holds the image
            *(["--read-listen", read_address] if read_address else []),
        ],
        root / "controller.log",
    )
    processes.append(controller)
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 512 * 1024 * 1024)]
    )
    stub = control_pb2_grpc.ControlStub(channel)

    def answers() -> bool:
        try:
            stub.ListNodes(ListNodesRequest(), timeout=2)
            return True
        except grpc.RpcError:
            return False

    wait(answers, "the controller", 60)
    fleet = []
    for index in range(fleet_processes):
        count = nodes // fleet_processes + (1 if index < nodes % fleet_processes else 0)
        fleet.append(
            spawn(
                [
                    str(BIN / "dockyard-agent"),
                    "hollow",
                    "--controller",
                    address,
                    "--count",
                    str(count),
                    "--name-prefix",
                    f"hollow{index}",
                    "--state-dir",
                    str(root / f"hollow{index}"),
                    "--cpus",
                    "64",
                    "--memory",
                    "256G",
                    "--log-level",
                    "warning",
                ],
                root / f"hollow{index}.log",
            )
        )
    processes.extend(fleet)
    joined = wait(
        lambda: (
            sum(
                n.status.state == NodeStatus.READY
                for n in stub.ListNodes(ListNodesRequest(), timeout=60).nodes
            )
            >= nodes
        ),
        f"{nodes} nodes READY",
        timeout,
    )
    print(f"{nodes} hollow nodes READY after {joined:.1f} s")
    reads = stub
    if read_address:
        print(f"list reads sampled on the read port {read_address}")
        reads = control_pb2_grpc.ControlStub(
            grpc.insecure_channel(
                read_address, options=[("grpc.max_receive_message_length", 512 * 1024 * 1024)]
            )
        )
    return controller.pid, stub, [p.pid for p in fleet], reads


METRICS_URL = [""]  # the controller's /metrics, once started


def session_messages() -> dict[str, float]:
    """The controller's session messages so far by "direction kind"
    (`dockyard_session_messages_total`; {} when the code under test has none)."""
    try:
        with urllib.request.urlopen(METRICS_URL[0], timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dockyard_session_messages_total{"):
            labels = dict(
                part.split("=", 1) for part in line.split("{", 1)[1].split("}", 1)[0].split(",")
            )
            name = " ".join(labels[label].strip('"') for label in ("direction", "kind"))
            counts[name] = float(line.rsplit(" ", 1)[1])
    return counts


def messages_per_task(before: dict[str, float], tasks: int) -> dict[str, float]:
    """Session messages from `before` (a `session_messages()`) to now, per task."""
    after = session_messages()
    if not after:
        return {}
    sent = {name: count - before.get(name, 0.0) for name, count in after.items()}
    each = ", ".join(
        f"{name} {count:.0f} ({count / max(tasks, 1):.3f})"
        for name, count in sorted(sent.items())
        if count
    )
    total = sum(sent.values())
    print(f"session messages: {total:.0f} ({total / max(tasks, 1):.3f} per task): {each}")
    result = {"messages_per_task": round(total / max(tasks, 1), 3)}
    for direction in ("in", "out"):
        part = sum(c for name, c in sent.items() if name.startswith(direction + " "))
        result[f"messages_{direction}_per_task"] = round(part / max(tasks, 1), 3)
    return result


def status_writes(tasks: int) -> dict[str, float]:
    """The task state changes the controller wrote from the agents' reports, by state
    (`dockyard_task_transitions_total`), and their number per task."""
    try:
        with urllib.request.urlopen(METRICS_URL[0], timeout=10) as answer:
            text = answer.read().decode()
    except OSError as exc:
        print(f"no /metrics: {exc}")
        return {}
    written: dict[str, float] = {}
    reports = [
        line for line in text.splitlines() if line.startswith("dockyard_task_status_reports_total ")
    ]
    if reports:  # the code under test counts them
        taken = float(reports[0].rsplit(" ", 1)[1])
        print(f"status reports taken: {taken:.0f} ({taken / max(tasks, 1):.2f} per task)")
    for line in text.splitlines():
        if line.startswith("dockyard_task_transitions_total{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            written[state] = float(line.rsplit(" ", 1)[1])
    total = sum(written.values())
    steps = ", ".join(f"{state} {count:.0f}" for state, count in sorted(written.items()))
    print(f"status changes written: {total:.0f} ({total / max(tasks, 1):.2f} per task): {steps}")
    return {"status_writes_per_task": round(total / max(tasks, 1), 2)}


def has_read_port(flag: str = "--read-listen") -> bool:
    """Whether the controller under test (PYTHONPATH) has `flag`."""
    found = subprocess.run(
        [str(BIN / "dockyard-controller"), "run", "--help"],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    return flag in found.stdout


class TermLoss:
    """`--lose-term-after N`: once N tasks are placed, the leader's lease is revoked in
    etcd (the leader key goes with it: the term ends as on a lost renewal, and the
    controller campaigns again). Times, from the loss: the next term (the leader key
    created again), that term's first placement, all RUNNING; and the controller's CPU
    from the loss to all RUNNING."""

    def __init__(self, after: int, etcdctl: list[str], cpu: Callable[[], float]) -> None:
        self.after = after
        self.etcdctl = etcdctl
        self.cpu = cpu
        self.lost_at = 0.0
        self.old_revision = 0
        self.cpu_at_loss = 0.0
        self.next_term = 0.0
        self.placed_at_loss = -1
        self.first_placement = 0.0
        self.on_loss: Callable[[], object] = lambda: None

    def _leader(self) -> tuple[int, int]:
        """The leader key's (create revision, lease), (0, 0) when absent."""
        found = subprocess.run(
            [*self.etcdctl, "get", "/dockyard/leader/current", "-w", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        kvs = json.loads(found.stdout).get("kvs", [])
        if not kvs:
            return 0, 0
        return int(kvs[0].get("create_revision", 0)), int(kvs[0].get("lease", 0))

    def poll(self, placed: int) -> None:
        """Called with the number of placed tasks at each poll of the run."""
        if not self.after:
            return
        now = time.monotonic()
        if not self.lost_at:
            if placed >= self.after:
                self._lose(now)
            return
        if self.placed_at_loss < 0:
            # The first count after the revocation: the old term's writes are fenced
            # from it on, so a placement after it (once a new term is) is the new term's.
            self.placed_at_loss = placed
            return
        if not self.next_term:
            revision, _ = self._leader()
            if revision and revision != self.old_revision:
                self.next_term = now - self.lost_at
        if self.next_term and not self.first_placement and placed > self.placed_at_loss:
            self.first_placement = now - self.lost_at

    def _lose(self, now: float) -> None:
        revision, lease = self._leader()
        if not lease:
            return  # no leader at this moment: try at the next poll
        self.old_revision = revision
        self.cpu_at_loss = self.cpu()
        subprocess.run(
            [*self.etcdctl, "lease", "revoke", f"{lease:x}"],
            capture_output=True,
            check=True,
        )
        self.lost_at = now
        self.on_loss()
        print(f"  the leader's lease {lease:x} revoked with {self.after}+ tasks placed")

    def result(self, end: float) -> dict[str, float]:
        if not self.lost_at:
            return {}
        found = {
            "loss_to_term_s": round(self.next_term, 2),
            "loss_to_first_placement_s": round(self.first_placement, 2),
            "loss_to_running_s": round(end - self.lost_at, 2),
            "loss_controller_cpu_s": round(self.cpu() - self.cpu_at_loss, 1),
        }
        print(
            f"term lost: next term after {found['loss_to_term_s']} s, its first placement "
            f"after {found['loss_to_first_placement_s']} s, all RUNNING after "
            f"{found['loss_to_running_s']} s; controller CPU since the loss "
            f"{found['loss_controller_cpu_s']} s"
        )
        return found


def create_and_wait(
    stub: Any, services: int, per_service: int, timeout: float, loss: TermLoss | None = None
) -> tuple[float, float]:
    """Seconds until every task is placed and stored, and until all run."""
    start = time.monotonic()
    for index in range(services):
        spec = ServiceSpec(name=f"svc{index}")
        spec.task.container.image = "busybox"
        spec.task.container.command.extend(["sleep", "86400"])
        spec.replicated.replicas = per_service
        stub.CreateService(CreateServiceRequest(spec=spec), timeout=60)
    total = per_service * services
    placed_at: list[float] = []

    def all_running() -> bool:
        try:
            info = stub.GetInfo(GetInfoRequest(), timeout=120)
        except grpc.RpcError as exc:  # an overloaded etcd: ask again
            print(f"  GetInfo failed: {exc.code().name}")
            return False
        if not placed_at and info.tasks_total >= total and info.tasks_pending == 0:
            placed_at.append(time.monotonic() - start)
        if loss is not None:
            loss.poll(info.tasks_total - info.tasks_pending)
        return bool(info.tasks_running >= total)

    wait(all_running, f"{total} tasks RUNNING", timeout, interval=0.2)
    took = time.monotonic() - start
    return (placed_at[0] if placed_at else took), took


def report(
    nodes: int, total: int, placed: float, took: float, sampler: Sampler, cpu: dict[str, float]
) -> dict[str, Any]:
    result = {
        "nodes": nodes,
        "tasks": total,
        "seconds_to_placed": round(placed, 1),
        "placed_per_second": round(total / placed, 1),
        "seconds_to_running": round(took, 1),
        "tasks_per_second": round(total / took, 1),
        "controller_peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        **{f"{name}_cpu_seconds": round(seconds, 1) for name, seconds in cpu.items()},
        **{
            f"{name.replace(' ', '_')}_p{int(q * 100)}_ms": round(percentile(values, q) * 1000, 1)
            for name, values in sampler.latencies.items()
            for q in (0.5, 0.99)
        },
        "api_samples": len(sampler.latencies["node ls"]),
        "api_errors": sampler.errors,
        "load_average": os.getloadavg()[0],
    }
    print(
        f"{total} tasks placed and stored after {placed:.1f} s "
        f"({result['placed_per_second']} tasks/s)"
    )
    print(
        f"{total} tasks on {nodes} nodes RUNNING after {took:.1f} s "
        f"({result['tasks_per_second']} tasks/s); controller peak RSS "
        f"{result['controller_peak_rss_mib']} MiB"
    )
    print(
        "CPU seconds during the run: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())
        + f" (controller {cpu['controller'] / took * 100:.0f}% of one core)"
    )
    for name, values in sampler.latencies.items():
        print(
            f"  {name}: p50 {percentile(values, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.0f} ms, "
            f"median {statistics.median(values) * 1000 if values else 0:.0f} ms"
        )
    print(json.dumps(result))
    return result


def terms_lost(log: Path) -> int:
    """How often the controller lost its lease (a new term re-plans everything: a run
    with one is not comparable with a run without)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return -1
    for line in [line for line in lines if "leadership.lost" in line or "refresh_failed" in line][
        :6
    ]:
        print(f"  {line[:300]}")
    return sum("leadership.lost" in line for line in lines)


def profile(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy recording the controller, raw folded stacks, until SIGINT."""
    return subprocess.Popen(
        [
            *(str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "50"),
            *("--nonblocking", "--format", "raw", "--output", output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def etcdctl(etcd: list[int]) -> list[str]:
    """etcdctl's command for the embedded etcd: its client URL and, with TLS, the client
    certificate beside its CA (from etcd's command line; common/etcd_pki.py's names)."""
    command = ["etcdctl"]
    for pid in etcd:
        for arg in psutil.Process(pid).cmdline():
            if arg.startswith("--listen-client-urls="):
                command += ["--endpoints", arg.split("=", 1)[1]]
            if arg.startswith("--trusted-ca-file="):
                ca = Path(arg.split("=", 1)[1])
                command += [f"--cacert={ca}", f"--cert={ca.parent / 'client.pem'}"]
                command += [f"--key={ca.parent / 'client-key.pem'}"]
    return command


def term_loss(
    args: argparse.Namespace,
    pid: int,
    etcd: list[int],
    reader: list[int],
    profiling: list[subprocess.Popen[bytes]],
) -> TermLoss:
    """The run's term loss (none without --lose-term-after); `--profile` starts now, or
    with a loss at the loss (the new term's time only)."""
    loss = TermLoss(
        args.lose_term_after,
        etcdctl(etcd),
        lambda: cpu_seconds([pid]) - cpu_seconds(etcd) - cpu_seconds(reader),
    )
    if args.profile and args.lose_term_after:
        loss.on_loss = lambda: profiling.append(profile(pid, args.profile))
    elif args.profile:
        profiling.append(profile(pid, args.profile))
    return loss


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="dockyard-scale-"))
    processes: list[subprocess.Popen[bytes]] = []
    profiling: list[subprocess.Popen[bytes]] = []
    try:
        http_reads: dict[str, str] | None = {} if args.http_reads else None
        pid, stub, fleet, reads = start_cluster(
            root, args.nodes, args.timeout, processes, args.fleet_processes, http_reads
        )
        etcd = [c.pid for c in psutil.Process(pid).children() if "etcd" in c.name()]
        sampler = Sampler(pid, reads, args.read_interval)
        sampler.floor = start_floor(root, processes)
        sampler.latencies["floor"] = []
        for name, url in (http_reads or {}).items():
            sampler.http.append((name, url))
            sampler.latencies[name] = []
        sampler.start()
        if args.profile_fleet:  # one fleet process: the others run the same code
            profiling.append(profile(fleet[0], args.profile_fleet))
        reader = reader_pids(pid)
        loss = term_loss(args, pid, etcd, reader, profiling)
        before = {"controller": cpu_seconds([pid]), "etcd": cpu_seconds(etcd)}
        before["fleet"] = cpu_seconds(fleet)
        before["reader"] = cpu_seconds(reader)
        messages = session_messages()
        per_service = args.tasks // args.services
        placed, took = create_and_wait(stub, args.services, per_service, args.timeout, loss)
        end = time.monotonic()
        cpu = {"controller": cpu_seconds([pid]), "etcd": cpu_seconds(etcd)}
        cpu["fleet"] = cpu_seconds(fleet)
        cpu["reader"] = cpu_seconds(reader)
        cpu = {name: seconds - before[name] for name, seconds in cpu.items()}
        # etcd and the reader process (when the code has one) are the controller's children
        cpu["controller"] -= cpu["etcd"] + cpu["reader"]
        if not reader:
            cpu.pop("reader")
        sampler.done.set()
        sampler.join(5)
        result = report(args.nodes, per_service * args.services, placed, took, sampler, cpu)
        result.update(status_writes(per_service * args.services))
        result.update(messages_per_task(messages, per_service * args.services))
        result.update(loss.result(end))
        result["terms_lost"] = terms_lost(root / "controller.log")
        print(f"leader terms lost during the run: {result['terms_lost']}")
        result["samples"] = sampler.latencies  # after the JSON line: for the pooled percentiles
        return result
    finally:
        for profiler in profiling:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        for process in reversed(processes):
            stop(process)
        if args.keep_logs:
            kept = Path(args.keep_logs) / f"controller-{time.time():.0f}.log"
            shutil.copy(root / "controller.log", kept)
            print(f"controller log kept in {kept}")
        shutil.rmtree(root, ignore_errors=True)


def _candidate(path: str) -> None:
    """The daemons of "this tree" import from `path` (none: the installed tree)."""
    if path:
        ENV["PYTHONPATH"] = path
    else:
        ENV.pop("PYTHONPATH", None)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--fleet-processes", type=int, default=4)
    parser.add_argument("--profile", default="", help="py-spy's raw output for the controller")
    parser.add_argument(
        "--profile-fleet", default="", help="py-spy's raw output for the first fleet process"
    )
    parser.add_argument("--baseline", default="", help="PYTHONPATH of the code to compare with")
    parser.add_argument(
        "--candidate",
        default="",
        help="PYTHONPATH of the code measured as this tree (default: the installed tree; "
        "a copy lets the tree be edited while a run goes on)",
    )
    parser.add_argument(
        "--read-interval", type=float, default=1.0, help="seconds between two rounds of reads"
    )
    parser.add_argument("--keep-logs", default="", help="a directory to copy the logs to")
    parser.add_argument(
        "--http-reads",
        action="store_true",
        help="also time GET /v1/services on --http-listen and on the reader's "
        "--read-http-listen (when the code has it), alternating, in the same run",
    )
    parser.add_argument(
        "--lose-term-after",
        type=int,
        default=0,
        help="revoke the leader's lease once this many tasks are placed (a lost term), "
        "and time the next term's first placement and all RUNNING from the loss",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="baseline and this tree, alternating; medians"
    )
    args = parser.parse_args()
    subprocess.run(["uptime"], check=False)
    baselines: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    _candidate(args.candidate)
    for _ in range(args.rounds):
        if args.baseline:
            print(f"baseline (PYTHONPATH={args.baseline}):")
            ENV["PYTHONPATH"] = args.baseline
            profiles = args.profile, args.profile_fleet
            args.profile = args.profile_fleet = ""
            baselines.append(run_once(args))
            _candidate(args.candidate)
            args.profile, args.profile_fleet = profiles
            print("this tree:")
        results.append(run_once(args))
        subprocess.run(["uptime"], check=False)
    keys = (
        "seconds_to_placed",
        "seconds_to_running",
        "controller_cpu_seconds",
        "loss_to_term_s",
        "loss_to_first_placement_s",
        "loss_to_running_s",
        "loss_controller_cpu_s",
        "status_writes_per_task",
        "messages_per_task",
        "messages_in_per_task",
        "messages_out_per_task",
        "fleet_cpu_seconds",
        "service_ls_p50_ms",
        "service_ls_p99_ms",
        "node_ls_p50_ms",
        "node_ls_p99_ms",
        "floor_p50_ms",
        "floor_p99_ms",
        "http_services_(controller)_p50_ms",
        "http_services_(controller)_p99_ms",
        "http_services_(reader)_p50_ms",
        "http_services_(reader)_p99_ms",
    )
    print(f"medians of {args.rounds} round(s):")
    for key in (*keys, "reader_cpu_seconds"):
        mine = _median(results, key)
        if not baselines:
            print(f"  {key}: {mine}")
            continue
        base = _median(baselines, key)
        ratio = f" ({mine / base:.2f}x)" if base else ""
        print(f"  {key}: {mine} vs {base}{ratio}")
    print(f"every round's reads pooled ({args.rounds} round(s)):")
    if baselines:
        print_pooled(baselines, "baseline ")
    print_pooled(results, "")
    for q in ("p50", "p99"):  # the reader's HTTP port against --http-listen, same runs
        reader = _median(results, f"http_services_(reader)_{q}_ms")
        controller = _median(results, f"http_services_(controller)_{q}_ms")
        if reader and controller:
            print(
                f"  GET /v1/services {q}: reader {reader} ms vs --http-listen {controller} ms "
                f"({reader / controller:.2f}x)"
            )


def pooled(runs: list[dict[str, Any]], name: str) -> tuple[float, float, int]:
    """p50 and p99 (ms) of the reads `name` over every round's samples, and their
    number: a round of a few seconds, sampled once a second, gives a handful of reads,
    and the p99 of a handful is its slowest read."""
    values = [v for run in runs for v in run.get("samples", {}).get(name, [])]
    return (
        round(percentile(values, 0.5) * 1000, 1),
        round(percentile(values, 0.99) * 1000, 1),
        len(values),
    )


def print_pooled(runs: list[dict[str, Any]], label: str) -> None:
    names = sorted({name for run in runs for name in run.get("samples", {})})
    for name in names:
        p50, p99, count = pooled(runs, name)
        print(f"  {label}{name}: p50 {p50} ms, p99 {p99} ms over {count} reads")


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [run[key] for run in runs if key in run]
    return round(statistics.median(values), 1) if values else 0.0


if __name__ == "__main__":
    main()
