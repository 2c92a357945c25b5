"""The chaos suite: real controllers on real etcd, agents, one fault per test.

Each test runs its scenario once with short timings (a 2 s lease); `-m slow` runs the
soak, every scenario DOCKYARD_CHAOS_RUNS times (5 by default) for p50/p99, with the
controllers down 30 s instead of 10 s. With DOCKYARD_CHAOS_REPORT=path every test
appends its figures to that JSON file (`python -m tests.chaos.report path` prints the
table of docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.v1.workloads_pb2 import Task
from tests.agent.conftest import ImageRegistry
from tests.chaos.figures import RUNS_ENV, Row, Run, record
from tests.chaos.host_faults import FAKETIME_LIB, HOST_SCENARIOS
from tests.chaos.scenarios import SCENARIOS as BASE_SCENARIOS
from tests.runtime.conftest import _have_runc

SCENARIOS = {**BASE_SCENARIOS, **HOST_SCENARIOS}
RUNC = pytest.mark.skipif(not _have_runc(), reason="needs root, runc, conmon and /bin/busybox")
NETNS = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"),
    reason="needs root, iproute2 and iptables (a network namespace cut off by iptables)",
)
FAKETIME = pytest.mark.skipif(
    not Path(FAKETIME_LIB).exists(), reason="needs libfaketime (faketime)"
)


def _check(name: str, runs: list[Run]) -> None:
    scenario = SCENARIOS[name]
    row = Row.of(name, scenario.target, runs)
    record(row)
    print(f"\n{row}")
    violations = [v for run in runs for v in run.summary.violations]
    assert not violations, f"{name}: invariant violations: {violations}"


def _repeat(name: str, run: Callable[[Path], Run], root: Path) -> None:
    count = int(os.environ.get(RUNS_ENV, "5"))
    _check(name, [run(root / f"run{index}") for index in range(count)])


def test_agent_sigkill(tmp_path: Path) -> None:
    _check("agent SIGKILL", [SCENARIOS["agent SIGKILL"].run(tmp_path)])


@RUNC
@pytest.mark.runc
@pytest.mark.registry
def test_agent_restart_keeps_containers(tmp_path: Path, image_registry: ImageRegistry) -> None:
    name = "agent restart (runc)"
    _check(name, [SCENARIOS[name].run(tmp_path, image_registry.busybox)])


def test_leader_sigkill(tmp_path: Path) -> None:
    _check("leader SIGKILL", [SCENARIOS["leader SIGKILL"].run(tmp_path)])


def test_leader_sigstop_past_lease_never_writes(tmp_path: Path) -> None:
    _check("leader SIGSTOP > lease", [SCENARIOS["leader SIGSTOP > lease"].run(tmp_path)])


def test_all_controllers_down(tmp_path: Path) -> None:
    _check("all controllers down", [SCENARIOS["all controllers down"].run(tmp_path)])


def test_one_etcd_member_down(tmp_path: Path) -> None:
    _check("one etcd member down", [SCENARIOS["one etcd member down"].run(tmp_path)])


def test_etcd_quorum_lost(tmp_path: Path) -> None:
    _check("etcd quorum lost", [SCENARIOS["etcd quorum lost"].run(tmp_path)])


@NETNS
def test_node_cut_off_then_healed(tmp_path: Path) -> None:
    _check("node cut off, healed", [SCENARIOS["node cut off, healed"].run(tmp_path)])


@RUNC
@pytest.mark.runc
@pytest.mark.registry
def test_agent_state_disk_full(tmp_path: Path, image_registry: ImageRegistry) -> None:
    name = "agent disk full (runc)"
    _check(name, [SCENARIOS[name].run(tmp_path, image_registry.busybox)])


@FAKETIME
def test_controller_clock_jump(tmp_path: Path) -> None:
    _check("controller clock ±1 h", [SCENARIOS["controller clock ±1 h"].run(tmp_path)])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SCENARIOS if "runc" not in n])
def test_soak(tmp_path: Path, name: str) -> None:
    scenario = SCENARIOS[name]
    if name == "all controllers down":
        _repeat(name, lambda root: scenario.run(root, 30.0), tmp_path)
    else:
        _repeat(name, scenario.run, tmp_path)


@pytest.mark.slow
@RUNC
@pytest.mark.runc
@pytest.mark.registry
def test_soak_agent_restart(tmp_path: Path, image_registry: ImageRegistry) -> None:
    name = "agent restart (runc)"
    _repeat(name, lambda root: SCENARIOS[name].run(root, image_registry.busybox), tmp_path)


@pytest.mark.slow
@RUNC
@pytest.mark.runc
@pytest.mark.registry
def test_soak_agent_state_disk_full(tmp_path: Path, image_registry: ImageRegistry) -> None:
    name = "agent disk full (runc)"
    _repeat(name, lambda root: SCENARIOS[name].run(root, image_registry.busybox), tmp_path)


def test_checker_sees_a_duplicate_written_behind_the_controllers(tmp_path: Path) -> None:
    """The checker can fail: a second live task in a slot, written straight into etcd."""
    from dockyard.controller.store import TASKS, Store
    from tests.chaos.rig import Rig
    from tests.conftest import LoopThread

    rig = Rig(tmp_path)
    runner = LoopThread()
    try:
        rig.start_controllers(1)
        rig.start_agents(("n1",))
        service = rig.create_service("web", 1)
        checker = rig.start_checker()
        rig.steady(service, 1)
        duplicate = Task()
        duplicate.CopyFrom(checker.snapshot().running(service)[0])
        duplicate.id = "duplicate0000000000000000"

        async def write() -> None:
            store = Store(rig.etcd.endpoints)
            await store.connect()
            try:
                await store.create(TASKS, duplicate.id, duplicate)
            finally:
                await store.close()

        runner.run(write())
        checker.wait_for(lambda view: duplicate.id in view.tasks, "the duplicate seen", 10)
        summary = checker.finish()
        assert summary.max_extra == 1
        assert summary.violations, summary
        assert summary.task_changes >= 1  # the duplicate's creation, also on /v1/events
        assert not [v for v in summary.violations if "/v1/events" in v], summary
    finally:
        runner.close()
        rig.close()
