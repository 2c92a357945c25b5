"""The chaos scenarios: each builds its rig, injects one fault, measures, and checks.

A scenario returns a `Run` (recovery seconds and the invariant checker's summary); the
tests run each once (short timings) and the soak repeats them. Every scenario asserts
what it is about; the checker's violations are asserted by the caller, after the
figures were recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dockyard.v1.control_pb2 import GetInfoRequest, GetServiceRequest, UpdateServiceRequest
from dockyard.v1.types_pb2 import NodeStatus
from tests.chaos.figures import Run
from tests.chaos.invariants import View, live
from tests.chaos.rig import GRACE, LEASE, Rig
from tests.runtime.conftest import cleanup_everything

NODES = ("n1", "n2", "n3")
DOWN_GRACE = 1.0  # --node-down-grace where a node's tasks are to move quickly


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str
    run: Callable[..., Run]


def _placed(service_id: str, slot: int) -> Callable[[View], bool]:
    """A live task for the slot has been given a node by a scheduler."""
    return lambda view: any(
        t.service_id == service_id and t.slot == slot and live(t) and t.node_id
        for t in view.tasks.values()
    )


def _node_id(view: View, name: str) -> str:
    return next(node_id for node_id, node in view.nodes.items() if node.spec.name == name)


def _retry(action: Callable[[], None], what: str, timeout: float = 30) -> None:
    """Run action until it does not raise a gRPC error (a controller catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {error}") from error
            time.sleep(0.2)


# -- agents ----------------------------------------------------------------------


def agent_sigkill(root: Path) -> Run:
    """SIGKILL an agent: its tasks run elsewhere within grace + delay (+ placement)."""
    rig = Rig(root, down_grace=DOWN_GRACE)
    try:
        rig.start_controllers(1)
        rig.start_agents(NODES)
        service = rig.create_service("web", 6)
        checker = rig.start_checker()
        rig.steady(service, 6, 60)
        victim = _node_id(checker.snapshot(), "n1")
        assert any(t.node_id == victim for t in checker.snapshot().running(service))
        killed = time.monotonic()
        rig.agents["n1"].kill()
        done = rig.wait_running(service, 6, GRACE + DOWN_GRACE + 60, exclude_node=victim)
        return Run(done - killed, checker.finish())
    finally:
        rig.close()


def agent_restart(root: Path, image: str) -> Run:
    """SIGKILL a runc agent and start it again: its containers ran on, none restarted."""
    rig = Rig(root, down_grace=10.0)
    cgroup = f"dockyard-chaos-{root.name}"
    rig.cleanups.append(
        lambda: cleanup_everything(rig.root / "c0" / "agent-r1" / "runtime", cgroup)
    )
    try:
        rig.start_controllers(1)
        rig.start_agents(("r1",), runtime="runc", extra=["--cgroup-parent", cgroup])
        service = rig.create_service("web", 2, image)
        checker = rig.start_checker()
        rig.steady(service, 2, 90)
        before = {t.id: t.status.container_id for t in checker.snapshot().running(service)}
        runc_root = rig.root / "c0" / "agent-r1" / "runtime" / "runc"
        pids = _runc_pids(runc_root)
        assert set(before.values()) <= pids.keys(), f"{before} not among runc's {pids}"
        controller_log = rig.daemon(0).log_path
        sessions = controller_log.read_text().count('"session.opened"')
        killed = time.monotonic()
        rig.agents["r1"].kill()
        rig.controllers[0].start_agent("r1")
        rig.wait_for(
            lambda: controller_log.read_text().count('"session.opened"') > sessions,
            "the restarted agent's session",
            60,
        )
        back = time.monotonic()
        time.sleep(GRACE + 1)  # a report of a lost container would arrive by now
        after = checker.snapshot()
        now = {t.id: t.status.container_id for t in after.running(service)}
        assert now == before, f"containers restarted or replaced: {before} -> {now}"
        created = [t.id for t in after.tasks.values() if t.id not in before]
        assert not created, f"tasks created after the agent restart: {created}"
        still = _runc_pids(runc_root)
        restarted = {c for c in before.values() if still.get(c) != pids[c]}
        assert not restarted, f"container processes restarted: {pids} -> {still}"
        return Run(back - killed, checker.finish())
    finally:
        rig.close()


def _runc_pids(runc_root: Path) -> dict[str, int]:
    """Container id -> pid of each container runc has running under this root."""
    listed = subprocess.run(
        ["runc", "--root", str(runc_root), "list", "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return {
        c["id"]: c["pid"]
        for c in json.loads(listed.stdout or "[]") or []
        if c["status"] == "running"
    }


# -- controllers -----------------------------------------------------------------


def leader_sigkill(root: Path) -> Run:
    """SIGKILL the leader of two: the other leads and places a new task."""
    rig = Rig(root, down_grace=DOWN_GRACE)
    try:
        rig.start_controllers(2)
        rig.start_agents(NODES)
        service = rig.create_service("web", 3)
        checker = rig.start_checker()
        rig.steady(service, 3, 60)
        leader = rig.leader()
        assert leader is not None
        term = checker.snapshot().leader_revision
        killed = time.monotonic()
        rig.signal(leader, signal.SIGKILL)
        _retry(lambda: rig.scale("web", 4, via=1 - leader, timeout=5), "scale via the follower")
        elected = checker.wait_for(lambda v: v.leader_revision > term, "a new leader", 30)
        placed = checker.wait_for(_placed(service, 4), "slot 4 placed", 30)
        running = rig.wait_running(service, 4, 60)
        return Run(
            placed - killed,
            checker.finish(),
            {"new_leader": elected - killed, "running": running - killed},
        )
    finally:
        rig.close()


def leader_sigstop(root: Path) -> Run:
    """SIGSTOP the leader past its lease; the other leads; the old one, resumed, never writes.

    To tell the old leader's writes from the new one's, the new leader is stopped too
    before the old one resumes: until the new leader's lease runs out nobody may write,
    so every etcd revision from the old leader's SIGCONT up to its own (legitimate)
    election is a write made by a deposed leader.
    """
    rig = Rig(root, down_grace=DOWN_GRACE)
    try:
        rig.start_controllers(2)
        rig.start_agents(NODES)
        service = rig.create_service("web", 3)
        checker = rig.start_checker()
        rig.steady(service, 3, 60)
        old = rig.leader()
        assert old is not None
        new = 1 - old
        term = checker.snapshot().leader_revision
        stopped = time.monotonic()
        rig.signal(old, signal.SIGSTOP)
        elected = checker.wait_for(lambda v: v.leader_revision > term, "a new leader", 30)
        new_term = checker.snapshot().leader_revision
        _retry(lambda: rig.scale("web", 4, via=new, timeout=5), "scale via the new leader")
        placed = checker.wait_for(_placed(service, 4), "slot 4 placed", 30)
        rig.signal(new, signal.SIGSTOP)
        time.sleep(0.5)  # the new leader's requests in flight land before the mark
        mark = checker.current_revision()
        rig.signal(old, signal.SIGCONT)
        violations: list[str] = []
        try:
            checker.wait_for(lambda v: v.leader_revision > new_term, "a later term", LEASE * 5)
            upto = checker.snapshot().leader_revision - 1
        except AssertionError:
            violations.append("no controller took the lease after the new leader stopped")
            upto = checker.current_revision()
        # Not leader writes: the leader key, and each controller's own registration
        # (controllers/<id>, on its own lease: expired while stopped, published again
        # on resuming, as any controller does, leader or not).
        writes = [
            (rev, key)
            for rev, key in checker.writes_between(mark, upto)
            if not key.endswith("/leader/current") and "/controllers/" not in key
        ]
        violations += [f"the deposed leader wrote {key} at revision {rev}" for rev, key in writes]
        rig.signal(new, signal.SIGCONT)
        rig.wait_running(service, 4, 60)
        summary = checker.finish()
        summary.violations.extend(violations)
        return Run(
            placed - stopped,
            summary,
            {"new_leader": elected - stopped},
        )
    finally:
        rig.close()


def controllers_down(root: Path, outage: float = 10.0) -> Run:
    """Both controllers down for `outage` s: tasks keep running, nothing is rescheduled."""
    rig = Rig(root, down_grace=10.0)
    try:
        rig.start_controllers(2)
        rig.start_agents(NODES)
        service = rig.create_service("web", 6)
        checker = rig.start_checker()
        rig.steady(service, 6, 60)
        before = {t.id for t in checker.snapshot().running(service)}
        for index in (0, 1):
            rig.signal(index, signal.SIGKILL)
            rig.daemon(index).process.wait(10)  # type: ignore[union-attr]
        time.sleep(outage)
        for index in (0, 1):
            rig.restart_controller(index)
        back = time.monotonic()
        rig.wait_for(lambda: _sessions(rig) == len(NODES), "every agent back in session", 60)
        checker.wait_for(_all_ready, "every node READY", 30)
        recovered = time.monotonic()
        time.sleep(2)  # a replacement decided at the return would be written by now
        after = checker.snapshot()
        running = {t.id for t in after.running(service)}
        created = after.tasks.keys() - checker.baseline().tasks.keys()
        assert running == before, f"tasks stopped or moved: {before ^ running}"
        assert not created, f"tasks rescheduled after the outage: {created}"
        return Run(recovered - back, checker.finish())
    finally:
        rig.close()


def _all_ready(view: View) -> bool:
    states = [node.status.state for node in view.nodes.values()]
    return len(states) == len(NODES) and all(s == NodeStatus.READY for s in states)


def _sessions(rig: Rig) -> int:
    leader = rig.leader()
    if leader is None:
        return -1
    control = rig.control(leader)
    try:
        return int(control.GetInfo(GetInfoRequest(), timeout=2).agent_sessions)
    except grpc.RpcError:
        return -1
    finally:
        control.close()


# -- etcd --------------------------------------------------------------------------


def etcd_member_down(root: Path) -> Run:
    """One of three etcd members SIGKILLed: the cluster keeps placing tasks."""
    rig = Rig(root, etcd_members=3, down_grace=DOWN_GRACE)
    try:
        rig.start_controllers(1)
        rig.start_agents(NODES)
        service = rig.create_service("web", 3)
        checker = rig.start_checker()
        rig.steady(service, 3, 60)
        killed = time.monotonic()
        rig.etcd.members[0].kill()
        _retry(lambda: rig.scale("web", 4, timeout=5), "scale with one member down")
        running = rig.wait_running(service, 4, 60)
        rig.etcd.start_member(0)
        _retry(lambda: rig.scale("web", 5, timeout=5), "scale with the member back")
        rig.wait_running(service, 5, 60)
        return Run(running - killed, checker.finish())
    finally:
        rig.close()


def etcd_quorum_lost(root: Path) -> Run:
    """Two of three members down: the API answers UNAVAILABLE; quorum back, all recovers."""
    rig = Rig(root, etcd_members=3, down_grace=10.0)
    try:
        rig.start_controllers(1)
        rig.start_agents(NODES)
        service = rig.create_service("web", 3)
        checker = rig.start_checker()
        rig.steady(service, 3, 60)
        update = _scale_request(rig, "web", 4)
        for index in (1, 2):
            rig.etcd.members[index].kill()
        lost = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            reading = pool.submit(
                _unavailable,
                rig,
                lambda c: c.GetService(GetServiceRequest(service="web"), timeout=30),
            )
            writing = pool.submit(_unavailable, rig, lambda c: c.UpdateService(update, timeout=30))
            read, write = reading.result(), writing.result()
        # The leader's lease runs out while quorum is lost.
        time.sleep(max(0.0, lost + LEASE * 2 - time.monotonic()))
        for index in (1, 2):
            rig.etcd.members[index].start()
        returned = time.monotonic()
        rig.etcd.wait_healthy(rig.etcd.members)
        _retry(lambda: rig.scale("web", 4, timeout=5), "scale after quorum returned", 60)
        running = rig.wait_running(service, 4, 60)
        checker.relist()  # every record still decodes
        return Run(
            running - returned,
            checker.finish(),
            {"unavailable_read": read, "unavailable_write": write},
        )
    finally:
        rig.close()


def _scale_request(rig: Rig, name: str, replicas: int) -> UpdateServiceRequest:
    control = rig.control()
    try:
        service = control.GetService(GetServiceRequest(service=name), timeout=10)
    finally:
        control.close()
    request = UpdateServiceRequest(service=name, version=service.meta.version)
    request.spec.CopyFrom(service.spec)
    request.spec.replicated.replicas = replicas
    return request


def _unavailable(rig: Rig, call: Callable[[Any], object]) -> float:
    """Seconds until the call failed; it must fail with UNAVAILABLE."""
    control = rig.control()
    started = time.monotonic()
    try:
        call(control)
    except grpc.RpcError as error:
        code = error.code()
        assert code == grpc.StatusCode.UNAVAILABLE, f"expected UNAVAILABLE, got {code}: {error}"
        return time.monotonic() - started
    finally:
        control.close()
    raise AssertionError("the API answered with quorum lost")


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "agent SIGKILL", f"≤ grace + delay + 5 s ({GRACE + DOWN_GRACE + 5:g} s)", agent_sigkill
        ),
        Scenario("agent restart (runc)", "no container restarted", agent_restart),
        Scenario("leader SIGKILL", f"new leader places ≤ 2 leases ({2 * LEASE} s)", leader_sigkill),
        Scenario(
            "leader SIGSTOP > lease",
            f"≤ 2 leases ({2 * LEASE} s); 0 deposed writes",
            leader_sigstop,
        ),
        Scenario("all controllers down", "nothing rescheduled", controllers_down),
        Scenario("one etcd member down", "keeps placing", etcd_member_down),
        Scenario("etcd quorum lost", "UNAVAILABLE, then full recovery", etcd_quorum_lost),
    )
}
