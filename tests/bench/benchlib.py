"""Helpers shared by bench_agent.py and bench_swarm.py (not a benchmark itself).

What they start and must stop: a private `docker-registry`, dockyard daemons,
and, for the baselines, a private `dockerd` (own data-root, exec-root, socket,
cgroup parent; no iptables changes) when no dockerd answers already. Everything
lives under one temp dir that `Cleanup` removes, also on Ctrl-C, SIGTERM and the
global time limit (SIGALRM).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")


class BenchTimeout(BaseException):
    """The global time limit ran out (raised from SIGALRM)."""


def install_limits(seconds: float) -> None:
    """SIGTERM behaves like Ctrl-C; SIGALRM after `seconds` aborts the run (cleanup still runs)."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"global time limit of {seconds:.0f} s reached")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(seconds)))


def run_timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Seconds from starting ``argv`` to its exit, exactly; its output is discarded and a
    failure raises CalledProcessError. No timeout, on purpose: with one, ``Popen.wait``
    polls the child with sleeps doubling from 1 to 50 ms, so that a 40 ms ``runc run``
    measured 65 ms and a 25 ms one 33 ms. The bench's global limit (:func:`install_limits`)
    stops a process that hangs."""
    start = time.perf_counter()
    subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_env(pythonpath: str) -> dict[str, str]:
    """This process's environment for a child that runs the tree at ``pythonpath`` (a
    `--baseline` tree), or this tree when it is empty (no inherited PYTHONPATH)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    return env


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(ours):
        return "n/a"
    return f"{ours / base:.2f}x"


def wait_for(
    predicate: Callable[[], Any], what: str, timeout: float, interval: float = 0.1
) -> float:
    """Seconds until `predicate()` is true; raises TimeoutError after `timeout`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(str(root))), key=len, reverse=True)


def umount_under(root: Path) -> None:
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroup(name: str) -> None:
    """rmdir /sys/fs/cgroup/<controller>/<name> (and children), v1 and v2 layouts."""
    name = name.strip("/")
    candidates = [CGROUP_ROOT / name]
    if CGROUP_ROOT.is_dir():
        candidates += [c / name for c in CGROUP_ROOT.iterdir() if c.is_dir()]
    for cg in candidates:
        if not cg.is_dir():
            continue
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            cg.rmdir()


def kill_processes_mentioning(text: str, names: Iterable[str] = ()) -> None:
    """SIGKILL processes whose command line contains `text` (our unique temp path)."""
    wanted = text.encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes()
            if wanted in cmd and (not names or any(n.encode() in cmd for n in names)):
                os.kill(int(entry.name), signal.SIGKILL)


def smaps_rollup(pid: int) -> dict[str, int]:
    """KiB values of /proc/PID/smaps_rollup (Rss, Pss, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


class Cleanup:
    """A LIFO stack of cleanup callables; each runs even if another fails."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, step: Callable[[], Any]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        # A second Ctrl-C or the alarm must not cut the cleanup short.
        signal.alarm(0)
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            while self.steps:
                what, step = self.steps.pop()
                try:
                    step()
                except Exception as exc:
                    print(f"cleanup: {what}: {exc}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


# -- registry -------------------------------------------------------------------


def start_registry(root: Path, cleanup: Cleanup, access_log: bool = False) -> str:
    """Debian's docker-registry on a free loopback port; returns HOST:PORT. With
    ``access_log`` every request is logged to ``root/registry.log``."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")
    root.mkdir(parents=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = spawn([binary, "serve", str(config)], root / "registry.log")
    cleanup.add("registry", lambda: stop_process(proc, 5))

    def answers() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"docker-registry exited: {(root / 'registry.log').read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    wait_for(answers, "docker-registry", 15, 0.05)
    return f"127.0.0.1:{port}"


def build_and_push(kind: str, tag: str, log: Path, *extra: str) -> None:
    """`python -m dockyard.agent.images.build KIND --tag TAG --push`."""
    with open(log, "ab") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dockyard.agent.images.build",
                kind,
                "--tag",
                tag,
                "--push",
                *extra,
            ],
            check=True,
            stdout=out,
            stderr=out,
            timeout=300,
        )


# -- dockyard daemons --------------------------------------------------------------


def start_agent(
    root: Path,
    name: str,
    controller: str,
    registry: str,
    cgroup_parent: str,
    cleanup: Cleanup,
    log_level: str = "warning",
    extra: Sequence[str] = (),
) -> tuple[str, Path]:
    """One runc agent with its own state dir and cgroup parent; returns (address, state dir).

    The cleanup removes its containers through runc, unmounts, and removes its cgroups.
    """
    state = root / name
    root.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    proc = spawn(
        [
            str(BIN / "dockyard-agent"),
            "run",
            "--insecure",
            "--controller",
            controller,
            "--name",
            name,
            "--listen",
            address,
            "--state-dir",
            str(state),
            "--runtime",
            "runc",
            "--registry-mirror",
            f"http://{registry}",
            "--insecure-registry",
            registry,
            "--cgroup-parent",
            cgroup_parent,
            "--log-level",
            log_level,
            "--docker-api-socket",  # not the host's /run/dockyard/docker.sock (extra may set one)
            "",
            *extra,
        ],
        root / f"{name}.log",
    )

    def teardown() -> None:
        stop_process(proc)
        runc_cleanup(state / "runtime", cgroup_parent)

    cleanup.add(f"agent {name}", teardown)
    import grpc

    from dockyard.v1 import containers_pb2_grpc
    from dockyard.v1.containers_pb2 import ListContainersRequest

    with grpc.insecure_channel(address) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)

        def answers() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"agent {name} exited: {(root / f'{name}.log').read_text()}")
            try:
                stub.List(ListContainersRequest(), timeout=2)
                return True
            except grpc.RpcError:
                return False

        wait_for(answers, f"agent {name}", 30, 0.1)
    return address, state


def runc_cleanup(runtime_root: Path, cgroup_parent: str) -> None:
    """Kill/delete every runc container of this root, kill its conmons, unmount, rm cgroups."""
    runc_root = runtime_root / "runc"
    if runc_root.is_dir():
        for entry in runc_root.iterdir():
            if entry.is_dir():
                for args in (["kill", entry.name, "KILL"], ["delete", "-f", entry.name]):
                    subprocess.run(
                        ["runc", "--root", str(runc_root), *args],
                        capture_output=True,
                        check=False,
                        timeout=30,
                    )
    kill_processes_mentioning(str(runtime_root), ["conmon"])
    umount_under(runtime_root)
    remove_cgroup(cgroup_parent)


# -- dockerd ------------------------------------------------------------------------


CONTAINERD_CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = "{root}/debug.sock"
"""


class Docker:
    """A dockerd to compare with: the running one, or a private one this script starts.

    A private dockerd gets its own data-root, exec-root, socket, containerd (never the
    host's, which dockerd would otherwise pick up from /run/containerd) and cgroup
    parent, `--iptables=false --ip-forward=false` (no host firewall changes), and the
    bench registry as `--insecure-registry`. With `private=True` (the tests) a running
    engine is never used, and it has no bridge (`--bridge=none`: no docker0, no veth).
    Stopping it removes all it made, and only the bridges it created (with their veths).
    """

    def __init__(self, root: Path, registry: str, cleanup: Cleanup, private: bool = False) -> None:
        self.root = root
        self.registry = registry
        self.cleanup = cleanup
        self.private = private
        # A private engine is addressed by its socket only, never by the DOCKER_* of the
        # environment (another engine's host, TLS material or config).
        self.env = {
            k: v for k, v in os.environ.items() if not (private and k.startswith("DOCKER_"))
        }
        self.started = False
        self.available = False
        self.why_not = ""

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args],
            env=self.env,
            text=True,
            timeout=timeout,
            check=check,
            capture_output=capture,
            stdin=subprocess.DEVNULL,
        )

    def _answers(self) -> bool:
        try:
            return (
                self.docker(
                    "version", "--format", "{{.Server.Version}}", timeout=10, check=False
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> bool:
        if (
            shutil.which("docker") is None
            or shutil.which("dockerd") is None
            or (self.private and shutil.which("containerd") is None)
        ):
            self.why_not = "dockerd/docker not installed (apt-get install docker.io)"
            print(f"Docker baseline skipped: {self.why_not}")
            return False
        running = os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()
        if not self.private and running and self._answers():
            self.available = True
            print(
                "Docker baseline: using the dockerd that is already running "
                "(loopback registries are insecure by default there)"
            )
            return True
        self.root.mkdir(parents=True)
        sock = self.root / "docker.sock"
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        self.cgroup_parent = f"dockyard-bench-docker-{self.root.name[-6:]}"
        bridges_before = set(self._bridges())
        cgroups_before = {p for p in CGROUP_ROOT.glob("*/docker")}
        args = [
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
            "--insecure-registry",
            self.registry,
            "--iptables=false",
            "--ip-forward=false",
            "--cgroup-parent",
            self.cgroup_parent,
        ]
        processes: list[subprocess.Popen[bytes]] = []
        if self.private:
            containerd = self.root / "containerd"
            containerd.mkdir()
            config = containerd / "config.toml"
            config.write_text(CONTAINERD_CONFIG.format(root=containerd))
            processes.append(
                spawn(["containerd", "--config", str(config)], self.root / "containerd.log")
            )
            args += ["--containerd", str(containerd / "containerd.sock"), "--bridge=none"]
        proc = spawn(args, self.root / "dockerd.log")
        processes.insert(0, proc)
        self.started = True

        def teardown() -> None:
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    ids = self.docker("ps", "-aq", timeout=30, check=False).stdout.split()
                    if ids:
                        self.docker("rm", "-f", *ids, timeout=120, check=False)
            for process in processes:  # dockerd, then its containerd
                stop_process(process, 30)
            kill_processes_mentioning(str(self.root))  # containerd, shims
            umount_under(self.root)
            for bridge in set(self._bridges()) - bridges_before:
                for link in self._bridges()[bridge]:
                    subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            remove_cgroup(self.cgroup_parent)
            for cg in {p for p in CGROUP_ROOT.glob("*/docker")} - cgroups_before:
                remove_cgroup(str(cg.relative_to(CGROUP_ROOT)))
            shutil.rmtree(self.root, ignore_errors=True)

        self.cleanup.add("dockerd", teardown)
        try:
            wait_for(lambda: proc.poll() is None and self._answers(), "dockerd", 60, 0.3)
        except TimeoutError:
            log = (self.root / "dockerd.log").read_text()[-800:]
            self.why_not = f"dockerd did not start: {log}"
            print(f"Docker baseline skipped: {self.why_not}")
            return False
        self.available = True
        print(
            f"Docker baseline: started a private dockerd "
            f"({self.docker('version', '--format', '{{.Server.Version}}').stdout.strip()}, "
            f"socket {sock})"
        )
        return True

    @staticmethod
    def _bridges() -> dict[str, list[str]]:
        """Docker's bridges on this host (docker0, docker_gwbridge of swarm mode, br-*) and
        the veths on each."""
        found = {}
        for link in Path("/sys/class/net").iterdir():
            if link.name in ("docker0", "docker_gwbridge") or link.name.startswith("br-"):
                brif = link / "brif"
                found[link.name] = sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []
        return found
