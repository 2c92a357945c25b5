"""Chaos scenarios that change a host around a process: its network, its disk, its clock.

- a node's host cut off (iptables DROP inside the agent's own network namespace) past
  the node grace, then healed;
- an agent's state disk full (a small tmpfs the test mounts under its state dir);
- a controller's wall clock jumping ±1 h (libfaketime, monotonic clock untouched).

Each builds a rig (tests/chaos/rig.py), removes what it set up (namespace, veth,
rules, mount) also when it failed, and returns a `Run` for the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from dockyard.v1.control_pb2 import CreateServiceRequest
from dockyard.v1.types_pb2 import NodeStatus
from dockyard.v1.workloads_pb2 import RestartPolicy, ServiceSpec
from tests.chaos.figures import Run
from tests.chaos.invariants import View, live
from tests.chaos.rig import GRACE, Rig
from tests.chaos.scenarios import NODES, Scenario, _node_id
from tests.conftest import BIN, Daemon
from tests.network.conftest import free_subnet
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything

DOWN_GRACE = 1.0
RECONNECT_CAP = 10.0  # the agent session's reconnect backoff cap, seconds
STOP_GRACE = 1.0  # the services' stop_grace_seconds (Rig.create_service)
CUT = GRACE + DOWN_GRACE + 3  # how long the node stays cut off, seconds
# Extra replicas are expected while a cut-off node cannot be told to stop its copies:
# from the replacements (grace + down grace after the cut) until the node, healed,
# has reconnected (at most the backoff cap) and stopped them (their stop grace).
CUT_WINDOW = CUT + RECONNECT_CAP + STOP_GRACE + 5


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


# -- a node's host cut off -------------------------------------------------------


@dataclass
class HostNamespace:
    """A network namespace joined to this host by a veth pair on a free /24 subnet.

    The host end holds .1 (controllers listen there), the namespace end .2. Nothing of
    the host's own routes or bridges is touched: the only route added is the subnet's
    own connected route on the new veth, gone with it.
    """

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = field(default_factory=free_subnet)

    @property
    def name(self) -> str:
        return f"dych{self.suffix}"

    @property
    def veth(self) -> str:
        return f"dycv{self.suffix}"

    @property
    def host_ip(self) -> str:
        return str(IPv4Network(self.subnet)[1])

    @property
    def inner_ip(self) -> str:
        return str(IPv4Network(self.subnet)[2])

    def create(self) -> None:
        prefix = IPv4Network(self.subnet).prefixlen
        _sh("ip", "netns", "add", self.name)
        _sh(
            "ip",
            "link",
            "add",
            self.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.name,
        )
        _sh("ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.veth)
        _sh("ip", "link", "set", self.veth, "up")
        self.inside("ip", "addr", "add", f"{self.inner_ip}/{prefix}", "dev", "eth0")
        self.inside("ip", "link", "set", "eth0", "up")
        self.inside("ip", "link", "set", "lo", "up")

    def inside(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", self.name, *args, check=check)

    def cut(self) -> None:
        """DROP everything in and out of the namespace's eth0 (its own iptables)."""
        self.inside("iptables", "-I", "INPUT", "-i", "eth0", "-j", "DROP")
        self.inside("iptables", "-I", "OUTPUT", "-o", "eth0", "-j", "DROP")

    def heal(self) -> None:
        self.inside("iptables", "-D", "INPUT", "-i", "eth0", "-j", "DROP")
        self.inside("iptables", "-D", "OUTPUT", "-o", "eth0", "-j", "DROP")

    def close(self) -> None:
        """Delete the namespace (its rules and the veth's inner end go with it), then the
        host end if it is still there."""
        _sh("ip", "netns", "del", self.name, check=False)
        if Path(f"/sys/class/net/{self.veth}").exists():
            _sh("ip", "link", "del", self.veth, check=False)

    def leftovers(self) -> list[str]:
        found = []
        if Path(f"/run/netns/{self.name}").exists():
            found.append(f"netns {self.name}")
        if Path(f"/sys/class/net/{self.veth}").exists():
            found.append(f"link {self.veth}")
        return found


def _running_on_agent(log: Path, task_ids: set[str]) -> set[str]:
    """Which of the tasks still have a running container on the agent, by its own log:
    `task.status` for each change of a task's state, `worker.removed` once its
    container was stopped and removed (a task dropped from the assignments)."""
    last: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"task.status"' not in line and '"worker.removed"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            last[entry["task_id"]] = entry.get("state", "REMOVED")
    return {task_id for task_id in task_ids if last.get(task_id) == "RUNNING"}


def start_agent_in(rig: Rig, host: HostNamespace, name: str) -> Daemon:
    """A hollow agent running inside the namespace (`ip netns exec` execs it)."""
    controllers = [arg for c in rig.controllers for arg in ("--controller", c.address)]
    args = [
        "ip",
        "netns",
        "exec",
        host.name,
        str(BIN / "dockyard-agent"),
        "run",
        *controllers,
        "--name",
        name,
        "--listen",
        f"{host.inner_ip}:{free_port()}",
        "--state-dir",
        str(rig.root / f"agent-{name}"),
        "--runtime",
        "hollow",
        "--log-level",
        "debug",
        "--insecure",
        "--docker-api-socket",  # not the host's /run/dockyard/docker.sock
        "",
    ]
    daemon = Daemon(name, args, rig.root / f"agent-{name}.log").start()
    rig.agents[name] = daemon  # stopped with the first controller's cluster
    return daemon


def node_cut_off(root: Path) -> Run:
    """Cut one node's host off past grace + down grace, then heal it.

    Its tasks are replaced on the other nodes; once healed, it reconnects and its stale
    copies are stopped (no longer live in the store). Extra replicas may exist meanwhile
    on the cut-off node (the controllers cannot tell it); CUT_WINDOW bounds that.
    """
    host = HostNamespace()
    rig: Rig | None = None
    try:
        host.create()
        rig = Rig(root, down_grace=DOWN_GRACE, window=CUT_WINDOW, controller_host=host.host_ip)
        rig.start_controllers(1)
        rig.start_agents(NODES[:2])
        start_agent_in(rig, host, NODES[2])
        rig.wait_for(lambda: rig is not None and rig._ready_nodes() >= 3, "3 nodes READY", 60)
        service = rig.create_service("web", 6)
        checker = rig.start_checker()
        rig.steady(service, 6, 60)
        victim = _node_id(checker.snapshot(), NODES[2])
        stale = {t.id for t in checker.snapshot().running(service) if t.node_id == victim}
        assert stale, "no task on the node to cut off"
        cut = time.monotonic()
        host.cut()
        replaced = rig.wait_running(service, 6, CUT + 60, exclude_node=victim)
        time.sleep(max(0.0, cut + CUT - time.monotonic()))
        # The cut-off node cannot be told: its copies still run beside the replacements.
        assert _running_on_agent(rig.agents[NODES[2]].log_path, stale) == stale
        healed = time.monotonic()
        host.heal()
        checker.wait_for(
            lambda v: v.nodes[victim].status.state == NodeStatus.READY,
            "the healed node READY",
            RECONNECT_CAP + 30,
        )
        rig.wait_for(
            lambda: not _running_on_agent(rig.agents[NODES[2]].log_path, stale),
            "the agent stopped its stale copies",
            30,
        )
        stopped = time.monotonic()
        assert not any(live(checker.snapshot().tasks[t]) for t in stale), "stale tasks live"
        rig.wait_running(service, 6, 30)
        summary = checker.finish()
        # The extra replicas the store cannot show: the cut-off node's stale copies, from
        # the replacements RUNNING until the healed agent stopped them.
        on_node = stopped - replaced
        summary.max_extra = max(summary.max_extra, 1)
        summary.extra_window = max(summary.extra_window, on_node)
        if on_node > CUT_WINDOW:
            summary.violations.append(f"stale copies ran {on_node:.1f} s > {CUT_WINDOW:g} s")
        return Run(replaced - cut, summary, {"heal_to_stale_stopped": stopped - healed})
    finally:
        if rig is not None:
            agent = rig.agents.get(NODES[2])
            if agent is not None:
                agent.kill()
            rig.close()
        host.close()
        assert not host.leftovers(), host.leftovers()


# -- agent state disk full -------------------------------------------------------

DISK = "16m"  # the tmpfs under the agent's state dir


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "dockyard-chaos", str(path))


def _unmount(path: Path) -> None:
    if _sh("mountpoint", "-q", str(path), check=False).returncode == 0:
        _sh("umount", "-l", str(path), check=False)


def _fill(path: Path) -> Path:
    """Fill the file system of `path` up to its last byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1):  # big chunks, then the last bytes one by one
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def disk_full(root: Path, image: str) -> Run:
    """A runc agent whose state dir is a full tmpfs: it keeps running and heartbeating,
    fails what needs the disk with a clear error, and recovers when space is freed."""
    rig = Rig(root, down_grace=10.0)
    state = rig.root / "c0" / "agent-r1"
    cgroup = f"dockyard-chaos-{root.name}-disk"
    rig.cleanups.append(lambda: _unmount(state))
    rig.cleanups.append(lambda: cleanup_everything(state / "runtime", cgroup))
    try:
        rig.start_controllers(1)
        _mount_tmpfs(state)
        rig.start_agents(("r1",), runtime="runc", extra=["--cgroup-parent", cgroup])
        service = rig.create_service("web", 1, image)
        checker = rig.start_checker()
        rig.steady(service, 1, 90)
        agent = rig.agents["r1"].process
        assert agent is not None
        node = _node_id(checker.snapshot(), "r1")
        filler = _fill(state)
        filled = time.monotonic()
        rig.scale("web", 2)
        try:
            failed = checker.wait_for(_failed_for_space(service, 2), "slot 2 failed: no space", 60)
        except AssertionError as error:
            slot = [(t.id, t.status) for t in checker.snapshot().tasks.values() if t.slot == 2]
            raise AssertionError(f"{error}: slot 2 is {slot}\n{rig.logs()}") from error
        time.sleep(GRACE * 2)  # a wedged or dead agent would be DOWN by now
        view = checker.snapshot()
        assert agent.poll() is None, f"the agent exited with the disk full:\n{rig.logs()}"
        assert view.nodes[node].status.state == NodeStatus.READY, "the node is not READY"
        assert len(view.running(service)) == 1, "the running task was disturbed"
        filler.unlink()
        freed = time.monotonic()
        running = rig.wait_running(service, 2, 90)
        _saved(rig, state, "worker.json", service, checker.snapshot())
        return Run(running - freed, checker.finish(), {"full_to_failed": failed - filled})
    finally:
        rig.close()
        assert _sh("mountpoint", "-q", str(state), check=False).returncode != 0


def _failed_for_space(service_id: str, slot: int) -> Callable[[View], bool]:
    def check(view: View) -> bool:
        return any(
            t.service_id == service_id
            and t.slot == slot
            and "No space left on device" in t.status.error
            for t in view.tasks.values()
        )

    return check


def _saved(rig: Rig, state: Path, name: str, service_id: str, view: View) -> None:
    """The agent's state file lists every running task of the service again."""
    running = {t.id for t in view.running(service_id)}

    def written() -> bool:
        try:
            return all(task_id in (state / name).read_text() for task_id in running)
        except OSError:
            return False

    rig.wait_for(written, f"{name} listing {running}", 30)


# -- controller clock jump -------------------------------------------------------

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


RESTART_DELAY = 8.0  # the crash-looping service's restart delay, seconds
CLOCK_LEASE = 6  # --leader-ttl of the clock scenario, seconds (see clock_jump)


def clock_jump(root: Path) -> Run:
    """Both controllers' wall clock jumps +1 h, then -2 h, then back; monotonic clocks
    do not move. Nothing is rescheduled, no node goes DOWN, the leader keeps its term,
    a restart delay lasts its length (neither fired at once by +1 h nor held for 2 h
    by -2 h), and scale-ups during the jumps are placed and run."""
    root.mkdir(parents=True, exist_ok=True)
    offset = root / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": FAKETIME_LIB,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "DONT_FAKE_MONOTONIC": "1",
    }
    # What is tested is the clock: a lease counted on the wall clock would be lost to
    # any of the jumps (an hour), however long. The rig's 2 s lease is for the failover
    # scenarios; a loaded machine can stall a controller past it (docs/reliability.md,
    # "The lease under load"), which is not what this scenario is about.
    rig = Rig(root, down_grace=DOWN_GRACE, controller_env=env, lease=CLOCK_LEASE)
    try:
        rig.start_controllers(2)
        rig.start_agents(NODES)
        service = rig.create_service("web", 6)
        checker = rig.start_checker()
        rig.steady(service, 6, 60)
        term = checker.snapshot().leader_revision
        before = {t.id for t in checker.snapshot().running(service)}
        crash = _create_crashing(rig)
        delays: list[float] = []
        seen_down: list[str] = []
        jumped = time.monotonic()
        # Each jump right after a crash is seen, so the restart delay runs across it.
        ended = checker.wait_for(_ended_tasks(crash, 1), "the first crash", 30)
        for shift, replicas in (("+3600", 7), ("-3600", 8), ("+0", 9)):
            offset.write_text(shift + "\n")
            restarted = checker.wait_for(
                _created_tasks(crash, len(delays) + 2),
                f"the crashed task restarted after the jump to {shift} s (delays so far: {delays})",
                RESTART_DELAY + 30,
            )
            delays.append(restarted - ended)
            ended = checker.wait_for(_ended_tasks(crash, len(delays) + 1), "a crash", 30)
            rig.scale("web", replicas, timeout=10)
            rig.wait_running(service, replicas, 30)
            _watch_nodes(checker.snapshot, seen_down, GRACE + DOWN_GRACE)
        view = checker.snapshot()
        assert not seen_down, f"nodes went DOWN after the clock jump: {seen_down}"
        assert view.leader_revision == term, "the leader lost its term with the clock jump"
        still = {t.id for t in view.running(service)}
        assert before <= still, f"tasks stopped or moved: {before - still}"
        created = {t.id for t in view.tasks.values() if t.service_id == service} - before
        assert len(created) == 3, f"web tasks beyond the 3 scale-ups: {sorted(created)}"
        early = [round(d, 2) for d in delays if d < RESTART_DELAY - 0.5]
        assert not early, f"restart delays of {RESTART_DELAY} s fired early: {delays}"
        delay = {"restart_delay_shortest": min(delays), "restart_delay_longest": max(delays)}
        return Run(time.monotonic() - jumped, checker.finish(), delay)
    finally:
        rig.close()


def _create_crashing(rig: Rig) -> str:
    """A service whose one task fails at once (hollow `false`), restarted after a delay."""
    spec = ServiceSpec(name="crash")
    spec.task.container.image = "busybox"
    spec.task.container.command.extend(["false"])
    spec.task.restart_policy.condition = RestartPolicy.ON_FAILURE
    spec.task.restart_policy.delay_seconds = RESTART_DELAY
    spec.replicated.replicas = 1
    control = rig.control()
    try:
        return str(control.CreateService(CreateServiceRequest(spec=spec), timeout=30).id)
    finally:
        control.close()


def _ended_tasks(service_id: str, count: int) -> Callable[[View], bool]:
    return lambda view: (
        sum(1 for t in view.tasks.values() if t.service_id == service_id and not live(t)) >= count
    )


def _created_tasks(service_id: str, count: int) -> Callable[[View], bool]:
    return lambda view: sum(1 for t in view.tasks.values() if t.service_id == service_id) >= count


def _watch_nodes(snapshot: Callable[[], View], seen: list[str], seconds: float) -> None:
    """For `seconds`, note every node that is not READY."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen += [
            n.spec.name
            for n in snapshot().nodes.values()
            if n.status.state != NodeStatus.READY and n.spec.name not in seen
        ]
        time.sleep(0.1)


HOST_SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "node cut off, healed",
            f"≤ grace + delay + 5 s ({GRACE + DOWN_GRACE + 5:g} s); "
            f"extra replicas ≤ {CUT_WINDOW:g} s",
            node_cut_off,
        ),
        Scenario("agent disk full (runc)", "keeps running; fails clearly; recovers", disk_full),
        Scenario("controller clock ±1 h", "nothing rescheduled; term kept", clock_jump),
    )
}
