"""Handshake cost: agent session establishment with mutual TLS against --insecure.

    python tests/bench/bench_tls.py [--agents 100] [--rounds 3] [--timeout 600]

For each mode (first --insecure, then mutual TLS) it starts a real controller
(embedded etcd, temp state dir, free ports), then one separate process that
opens N agent sessions at once with the agent's own `ControllerSession`
("many agents in one process", as bench_heartbeats.py does). A round measures,
per session, the time from channel creation to SessionAccepted (p50/p99), the
time until all N are accepted, and the CPU seconds the controller (and its
etcd, and the agents' process) used meanwhile; then the sessions are closed
and the next round reconnects the same nodes.

The TLS mode is set up as a user would: `dockyard-controller init`, `run`,
`token create --max-uses N`, one real `dockyard-agent join`; the other N-1 node
certificates are issued directly with common/pki.py from the state dir's CA key
(faster than N joins; such certificates are not in etcd's issued list, which
only `node rm` revocation needs). The sessions then use the agent's files and
credentials (`NodePKI.channel_credentials`, read from disk per connection).

Every session gets its own TCP connection (grpc's local subchannel pool), as
separate hosts would; otherwise grpc may multiplex all plaintext channels of one
process over a single connection. `--shared-subchannels` turns that off.
`--agents-only` is the internal mode that runs the sessions; it takes `open`,
`close` and `quit` on stdin. No asserts on the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import grpc
import psutil

from dockyard.common.etcd_server import free_port
from dockyard.v1.types_pb2 import NodeDescription, Platform, Resources

BIN = Path(sys.executable).parent
DESCRIPTION = NodeDescription(
    hostname="bench",
    platform=Platform(os="linux", architecture="amd64"),
    resources=Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30),
    agent_version="bench",
    runtime="hollow",
    runtime_version="bench",
    kernel_version="bench",
)
MODES = ("insecure", "tls")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- agents process -------------------------------------------------------------


def _own_connection_per_channel() -> None:
    """Make every grpc.aio channel of this process use its own subchannel (TCP connection)."""
    option = ("grpc.use_local_subchannel_pool", 1)
    insecure, secure = grpc.aio.insecure_channel, grpc.aio.secure_channel

    def insecure_channel(target: str, options: Any = None, *args: Any, **kwargs: Any) -> Any:
        return insecure(target, [*(options or []), option], *args, **kwargs)

    def secure_channel(
        target: str, credentials: Any, options: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        return secure(target, credentials, [*(options or []), option], *args, **kwargs)

    grpc.aio.insecure_channel = insecure_channel
    grpc.aio.secure_channel = secure_channel


async def run_agents(args: argparse.Namespace) -> None:
    """Per `open` on stdin: open all sessions, print one JSON line; `close`: end them."""
    from dockyard.agent.certs import NodePKI
    from dockyard.agent.identity import NodeIdentity
    from dockyard.agent.session import ControllerSession
    from dockyard.common import logging as dlogging

    class TimedSession(ControllerSession):
        started: float | None = None
        accepted_at: float | None = None
        attempts = 0

        async def _run_once(self, target: str) -> None:
            self.attempts += 1
            if self.started is None:  # _run_once creates the channel before its first await
                self.started = time.perf_counter()
            await super()._run_once(target)

        def _accepted(self, message: Any, target: str) -> None:
            if self.accepted_at is None:
                self.accepted_at = time.perf_counter()
            super()._accepted(message, target)

    dlogging.configure("warning", json=True)
    if not args.shared_subchannels:
        _own_connection_per_channel()
    agents: list[tuple[NodeIdentity, Any]] = []
    if args.pki_root:
        for i in range(args.agents):
            node_pki = NodePKI.of(Path(args.pki_root) / f"agent-{i}")
            agents.append(
                (NodeIdentity(node_pki.identity().id, f"bench-{i}"), node_pki.channel_credentials)
            )
    else:
        agents = [
            (NodeIdentity(secrets.token_hex(10), f"bench-{i}"), None) for i in range(args.agents)
        ]

    async def settled(session: TimedSession, task: asyncio.Task[None]) -> None:
        waiter = asyncio.ensure_future(session.connected.wait())
        try:
            await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    loop = asyncio.get_running_loop()
    sessions: list[TimedSession] = []
    tasks: list[asyncio.Task[None]] = []
    print("ready", flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "open":
            began = time.perf_counter()
            sessions = [
                TimedSession(
                    [args.controller], identity, lambda: DESCRIPTION, credentials=credentials
                )
                for identity, credentials in agents
            ]
            tasks = [asyncio.create_task(s.run()) for s in sessions]
            with contextlib.suppress(TimeoutError):  # a session task that ended has failed
                await asyncio.wait_for(
                    asyncio.gather(*(settled(s, t) for s, t in zip(sessions, tasks, strict=True))),
                    args.connect_timeout,
                )
            ended = time.perf_counter()
            times = [
                s.accepted_at - s.started
                for s in sessions
                if s.accepted_at is not None and s.started is not None
            ]
            errors = [
                repr(t.exception())
                for t in tasks
                if t.done() and not t.cancelled() and t.exception() is not None
            ][:3]
            last = max((s.accepted_at for s in sessions if s.accepted_at), default=ended)
            print(
                json.dumps(
                    {
                        "times": times,
                        "total": last - began,
                        "accepted": len(times),
                        "retries": sum(max(0, s.attempts - 1) for s in sessions),
                        "failed": sum(t.done() for t in tasks),
                        "errors": errors,
                    }
                ),
                flush=True,
            )
        elif line == "close":
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks, sessions = [], []
            print("closed", flush=True)
        else:  # quit, or EOF
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return


# -- the controller and the measuring --------------------------------------------


class BenchTimeout(BaseException):
    pass


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return float("nan")
    return t.user + t.system


def stop_group(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Mode:
    """One controller (insecure or TLS) and one agents process, in `root`."""

    def __init__(self, name: str, root: Path, args: argparse.Namespace) -> None:
        self.name = name
        self.tls = name == "tls"
        self.root = root
        self.args = args
        self.state = root / "controller"
        self.address = f"127.0.0.1:{free_port()}"
        self.join_address = f"127.0.0.1:{free_port()}"
        self.controller: subprocess.Popen[bytes] | None = None
        self.agents: subprocess.Popen[str] | None = None
        self.ctl: psutil.Process | None = None
        self.etcd: psutil.Process | None = None
        self.logs: list[IO[bytes]] = []
        self.channel: grpc.Channel | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        self.env["DOCKYARD_CONFIG"] = str(root / "cli-config")
        self.setup: dict[str, float] = {}

    # -- processes --

    def tool(self, *argv: str, timeout: float = 60) -> str:
        result = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def admin_tls(self) -> list[str]:
        admin = self.state / "pki" / "admin"
        return [
            "--tlscacert",
            str(admin / "ca.pem"),
            "--tlscert",
            str(admin / "cert.pem"),
            "--tlskey",
            str(admin / "key.pem"),
        ]

    def start_controller(self) -> None:
        argv = [
            str(BIN / "dockyard-controller"),
            "run",
            "--http-listen",
            "",
            "--listen",
            self.address,
            "--state-dir",
            str(self.state),
            "--heartbeat-period",
            str(self.args.heartbeat_period),
        ]
        if self.tls:
            began = time.monotonic()
            self.tool(
                "dockyard-controller",
                "init",
                "--state-dir",
                str(self.state),
                "--listen",
                self.address,
                "--context",
                "bench-admin",
            )
            self.setup["init_s"] = time.monotonic() - began
            argv += ["--join-listen", self.join_address]
        else:
            argv.append("--insecure")
        self.logs.append(open(self.root / "controller.log", "wb"))  # noqa: SIM115
        self.controller = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.logs[-1],
            stderr=self.logs[-1],
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        if self.tls:
            admin = self.state / "pki" / "admin"
            creds = grpc.ssl_channel_credentials(
                (admin / "ca.pem").read_bytes(),
                (admin / "key.pem").read_bytes(),
                (admin / "cert.pem").read_bytes(),
            )
            self.channel = grpc.secure_channel(self.address, creds)
        else:
            self.channel = grpc.insecure_channel(self.address)
        self.wait_until("controller leads", lambda: self.info().is_leader, 60)
        self.ctl = psutil.Process(self.controller.pid)
        self.etcd = next((c for c in self.ctl.children(recursive=True) if c.name() == "etcd"), None)

    def info(self) -> Any:
        from dockyard.v1 import control_pb2_grpc
        from dockyard.v1.control_pb2 import GetInfoRequest

        assert self.channel is not None
        return control_pb2_grpc.ControlStub(self.channel).GetInfo(GetInfoRequest(), timeout=5)

    def wait_until(self, what: str, predicate: Any, timeout: float) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            for proc in (self.controller, self.agents):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{what}: process {proc.pid} exited with {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                if predicate():
                    return time.monotonic() - began
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: timed out after {timeout:g} s waiting for {what}")

    def make_certificates(self) -> Path:
        """An agent token, one real join, and N-1 node certificates issued from the CA key."""
        from dockyard.agent.certs import NodePKI
        from dockyard.common import pki

        n = self.args.agents
        began = time.monotonic()
        token = self.tool(
            "dockyard-controller",
            "token",
            "create",
            "--role",
            "agent",
            "--ttl",
            "1h",
            "--max-uses",
            str(n),
            "-H",
            self.address,
            *self.admin_tls(),
        ).strip()
        self.setup["token_create_s"] = time.monotonic() - began
        root = self.root / "agents"
        began = time.monotonic()
        self.tool(
            "dockyard-agent",
            "join",
            "--token",
            token,
            self.join_address,
            "--state-dir",
            str(root / "agent-0"),
            "--name",
            "bench-0",
        )
        self.setup["one_join_s"] = time.monotonic() - began
        began = time.monotonic()
        ca = pki.CertificateAuthority.load(self.state / "pki")
        for i in range(1, n):
            cert, key = ca.issue_pair(
                pki.NODE,
                secrets.token_hex(10),
                validity=pki.NODE_VALIDITY,
                sans=["127.0.0.1", "::1", "localhost"],
            )
            NodePKI.of(root / f"agent-{i}").save(ca.cert_pem, cert, key, [self.address])
        self.setup["issue_rest_s"] = time.monotonic() - began
        return root

    def start_agents(self, pki_root: Path | None) -> None:
        argv = [
            sys.executable,
            __file__,
            "--agents-only",
            "--controller",
            self.address,
            "--agents",
            str(self.args.agents),
            "--connect-timeout",
            str(self.args.connect_timeout),
        ]
        if pki_root is not None:
            argv += ["--pki-root", str(pki_root)]
        if self.args.shared_subchannels:
            argv.append("--shared-subchannels")
        self.logs.append(open(self.root / "agents.log", "wb"))  # noqa: SIM115
        self.agents = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.logs[-1],
            text=True,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self.expect("ready")

    def send(self, line: str) -> str:
        assert self.agents is not None and self.agents.stdin and self.agents.stdout
        self.agents.stdin.write(line + "\n")
        self.agents.stdin.flush()
        return self.read()

    def read(self) -> str:
        assert self.agents is not None and self.agents.stdout
        reply = self.agents.stdout.readline().strip()
        if not reply:
            raise RuntimeError(f"agents process ended (exit {self.agents.poll()}); see agents.log")
        return reply

    def expect(self, word: str) -> None:
        if (reply := self.read()) != word:
            raise RuntimeError(f"agents process said {reply!r}, expected {word!r}")

    def agent_connections(self) -> int:
        """ESTABLISHED TCP connections from the agents process to the controller's port."""
        assert self.agents is not None
        port = int(self.address.rsplit(":", 1)[1])
        try:
            conns = psutil.Process(self.agents.pid).net_connections("tcp")
        except psutil.Error:
            return -1
        return sum(
            c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port for c in conns
        )

    # -- the measurement --

    def run(self) -> dict[str, Any]:
        args = self.args
        self.start_controller()
        pki_root = self.make_certificates() if self.tls else None
        self.start_agents(pki_root)
        time.sleep(1.0)  # let the controller settle after start (leader loops, CA publish)
        before, began = cpu_seconds(self.ctl), time.monotonic()
        time.sleep(args.idle)
        idle_rate = (cpu_seconds(self.ctl) - before) / (time.monotonic() - began)
        rounds = []
        for number in range(1, args.rounds + 1):
            print(
                f"{self.name}: round {number}/{args.rounds}: opening {args.agents} sessions ...",
                flush=True,
            )
            procs = {
                "controller": self.ctl,
                "etcd": self.etcd,
                "agents": psutil.Process(self.agents.pid) if self.agents else None,
            }
            lingering = self.agent_connections()
            start_cpu = {k: cpu_seconds(p) for k, p in procs.items()}
            began = time.monotonic()
            result = json.loads(self.send("open"))
            wall = time.monotonic() - began
            cpu = {k: cpu_seconds(p) - start_cpu[k] for k, p in procs.items()}
            result.update(
                wall_s=wall,
                cpu_s=cpu,
                connections=self.agent_connections() - lingering,
                lingering_connections=lingering,
                controller_cpu_net_s=cpu["controller"] - idle_rate * wall,
            )
            if result["errors"]:
                print(f"  errors: {result['errors']}", file=sys.stderr)
            print(
                f"  accepted {result['accepted']}/{args.agents} in {result['total']:.3f} s, "
                f"controller CPU {cpu['controller']:.3f} s, "
                f"{result['connections']} new TCP connections ({lingering} left from before)",
                flush=True,
            )
            rounds.append(result)
            if self.send("close") != "closed":
                raise RuntimeError("agents process did not close its sessions")
            self.wait_until("sessions closed", lambda: self.info().agent_sessions == 0, 30)
            time.sleep(args.pause)
        return summarize(self.name, args.agents, rounds, idle_rate, self.setup)

    def stop(self) -> None:
        if self.agents is not None and self.agents.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.agents.stdin is not None
                self.agents.stdin.write("quit\n")
                self.agents.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.agents.wait(5)
        stop_group(self.agents)
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        stop_group(self.controller)
        if self.etcd is not None:
            with contextlib.suppress(psutil.Error):
                self.etcd.kill()
            self.etcd = None
        for f in self.logs:
            f.close()

    def log_tail(self, chars: int = 1500) -> str:
        parts = []
        for name in ("controller.log", "agents.log"):
            path = self.root / name
            if path.exists():
                parts.append(
                    f"--- {self.name} {name} ---\n{path.read_text(errors='replace')[-chars:]}"
                )
        return "\n".join(parts)


def summarize(
    name: str, n: int, rounds: list[dict[str, Any]], idle_rate: float, setup: dict[str, float]
) -> dict[str, Any]:
    times = [t for r in rounds for t in r["times"]]
    per100 = 100 / n

    def med(key: str, sub: str | None = None) -> float:
        values = [r[key][sub] if sub else r[key] for r in rounds]
        return statistics.median(values) if values else float("nan")

    return {
        "mode": name,
        "sessions": len(times),
        "expected": n * len(rounds),
        "p50_ms": _quantile(times, 0.50) * 1e3,
        "p99_ms": _quantile(times, 0.99) * 1e3,
        "max_ms": max(times, default=float("nan")) * 1e3,
        "total_s": med("total"),
        "controller_cpu_per_100": med("cpu_s", "controller") * per100,
        "controller_cpu_net_per_100": med("controller_cpu_net_s") * per100,
        "etcd_cpu_per_100": med("cpu_s", "etcd") * per100,
        "agents_cpu_per_100": med("cpu_s", "agents") * per100,
        "controller_idle_cpu_pct": idle_rate * 100,
        "connections": min(r["connections"] for r in rounds),
        "retries": sum(r["retries"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "errors": [e for r in rounds for e in r["errors"]][:3],
        "rounds": [{k: v for k, v in r.items() if k != "times"} for r in rounds],
        "setup_s": setup,
    }


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so the line is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    ins, tls = results["insecure"], results["tls"]
    rows = [
        ("establish p50 (ms)", "p50_ms", 1),
        ("establish p99 (ms)", "p99_ms", 1),
        ("establish max (ms)", "max_ms", 1),
        ("all N accepted (s)", "total_s", 3),
        ("controller CPU s/100 agents", "controller_cpu_per_100", 3),
        ("  same, minus idle", "controller_cpu_net_per_100", 3),
        ("etcd CPU s/100 agents", "etcd_cpu_per_100", 3),
        ("agents' CPU s/100 agents", "agents_cpu_per_100", 3),
    ]
    print(
        f"\nDockyard handshake cost: {args.agents} agents opened at once, {args.rounds} rounds "
        f"(median of rounds; p50/p99 over all sessions), {os.cpu_count()} CPUs, "
        f"{'shared' if args.shared_subchannels else 'one TCP connection per session'}"
    )
    print(f"{'':<30}{'insecure':>12}{'mTLS':>12}{'TLS/insecure':>14}")
    ratios = {}
    for label, key, digits in rows:
        a, b = ins[key], tls[key]
        ratio = b / a if a and math.isfinite(a) and math.isfinite(b) else float("nan")
        ratios[key] = ratio
        print(f"{label:<30}{a:>12.{digits}f}{b:>12.{digits}f}{ratio:>13.2f}x")
    for label, key in (
        ("sessions accepted", "sessions"),
        ("TCP connections (min)", "connections"),
        ("retries", "retries"),
        ("failed sessions", "failed"),
    ):
        print(f"{label:<30}{ins[key]:>12}{tls[key]:>12}")
    print(
        f"{'controller idle CPU %':<30}{ins['controller_idle_cpu_pct']:>12.2f}"
        f"{tls['controller_idle_cpu_pct']:>12.2f}"
    )
    setup = tls["setup_s"]
    print(
        f"TLS setup: init {setup.get('init_s', 0):.2f} s, token create "
        f"{setup.get('token_create_s', 0):.2f} s, one join {setup.get('one_join_s', 0):.2f} s, "
        f"{args.agents - 1} certificates issued directly in {setup.get('issue_rest_s', 0):.2f} s"
    )
    print(
        json.dumps(
            _json_safe(
                {
                    "bench": "tls_handshake",
                    "agents": args.agents,
                    "rounds": args.rounds,
                    "cpus": os.cpu_count(),
                    "insecure": ins,
                    "tls": tls,
                    "ratios_tls_over_insecure": ratios,
                }
            )
        )
    )


def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dockyard-bench-tls-"))
    results: dict[str, dict[str, Any]] = {}
    mode: Mode | None = None
    try:
        for name in MODES:
            (tmp / name).mkdir()
            mode = Mode(name, tmp / name, args)
            try:
                results[name] = mode.run()
            except Exception:
                print(mode.log_tail(), file=sys.stderr)
                raise
            finally:
                # A second Ctrl-C/SIGTERM must not interrupt the cleanup.
                previous = (
                    signal.signal(signal.SIGINT, signal.SIG_IGN),
                    signal.signal(signal.SIGTERM, signal.SIG_IGN),
                )
                try:
                    mode.stop()
                finally:
                    signal.signal(signal.SIGINT, previous[0])
                    signal.signal(signal.SIGTERM, previous[1])
        report(args, results)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if mode is not None:
            mode.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--heartbeat-period",
        type=float,
        default=2.0,
        help="the controller's (heartbeats start right after acceptance)",
    )
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds of idle controller CPU baseline per mode"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="seconds a round may take to accept all sessions",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="global time limit (s)")
    parser.add_argument(
        "--shared-subchannels",
        action="store_true",
        help="let grpc share connections between the agents' channels",
    )
    parser.add_argument("--agents-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--controller", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pki-root", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agents < 1 or args.rounds < 1:
        parser.error("--agents and --rounds must be at least 1")
    if args.agents_only:
        asyncio.run(run_agents(args))
        return

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def alarm(_signum: int, _frame: object) -> None:
        raise BenchTimeout(f"global time limit of {args.timeout:g} s reached")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, int(args.timeout)))
    try:
        bench(args)
    except KeyboardInterrupt:
        sys.exit("interrupted; stopped everything")
    except BenchTimeout as exc:
        sys.exit(f"{exc}; stopped everything")


if __name__ == "__main__":
    main()
