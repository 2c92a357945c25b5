"""The runc runtime's fast paths: one runc per start, signals and deletes without runc.

Each path is checked by what it must not do (runc invocations, logged by a wrapper
binary) and by what it must leave behind (nothing of runc's, no cgroup), and each
fallback by the case that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.agent.runtime.base import ContainerRuntimeError, ContainerStatus
from dockyard.agent.runtime.runc.cgroups import CgroupV1, rmdir_tree
from dockyard.agent.runtime.runc.direct import delete_stopped, parse_signal, signal_init
from dockyard.agent.runtime.runc.records import ContainerDir, load_record
from dockyard.agent.runtime.runc.runexec import SHIM_NAME, shim_text, write_shim
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import Env

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


@pytest.fixture
async def logged(
    state_root: tuple[Path, str], busybox_layer: Path, tmp_path: Path
) -> AsyncIterator[tuple[Env, Path]]:
    """A runtime whose runc is a wrapper that appends each argv to a log."""
    root, cg = state_root
    calls = tmp_path / "runc-calls.log"
    wrapper = tmp_path / "runc-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec runc "$@"\n')
    wrapper.chmod(0o755)
    runtime = RuncRuntime(root, runc_binary=str(wrapper), cgroup_parent=cg)
    await runtime.recover()
    yield Env(runtime, busybox_layer, root, cg), calls
    await runtime.close()


def _verbs(calls: Path) -> list[str]:
    """The runc subcommand of each logged call (after `--root DIR`)."""
    if not calls.exists():
        return []
    verbs = []
    for line in calls.read_text().splitlines():
        words = line.split()
        verbs.append(" ".join(words[2:4]) if words[2] == "run" else words[2])
    return verbs


async def test_a_start_runs_runc_once(logged: tuple[Env, Path]) -> None:
    env, calls = logged
    info = await env.runtime.create(env.config("sh", "-c", "echo hello"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    assert [r.data async for r in env.runtime.logs(info.id)] == [b"hello\n"]
    await env.runtime.remove(info.id)
    # create+start in one `run --detach`; the exited container deleted without runc.
    assert _verbs(calls) == ["run --detach"]


async def test_stop_and_exit_need_no_runc(logged: tuple[Env, Path]) -> None:
    env, calls = logged
    info = await env.runtime.create(env.config("sh", "-c", "trap 'exit 7' TERM; sleep 30 & wait"))
    await env.runtime.start(info.id)
    await asyncio.sleep(0.2)  # the trap set
    exit_info = await env.runtime.stop(info.id, timeout=10)
    assert exit_info is not None and exit_info.exit_code == 7  # TERM reached it
    assert _verbs(calls) == ["run --detach"]  # no `kill`, no `delete`
    assert not await asyncio.to_thread((env.state_root / "runc" / info.id).exists)
    for controller in ("memory", "pids"):
        path = Path("/sys/fs/cgroup", controller, env.cgroup_parent, info.id)
        assert not await asyncio.to_thread(path.exists), path
    # and it starts again from there (runc state and cgroups made anew)
    await env.runtime.start(info.id)
    await env.runtime.remove(info.id, force=True)
    assert _verbs(calls) == ["run --detach", "run --detach"]


async def test_an_attach_waiting_for_the_start_keeps_create_then_start(
    logged: tuple[Env, Path],
) -> None:
    env, calls = logged
    info = await env.runtime.create(env.config("sh", "-c", "echo first"))
    session = await env.runtime.attach(info.id)
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    chunks = [c.data async for c in session.output()]
    assert b"".join(chunks) == b"first\n"  # the first output reached the attach
    await env.runtime.remove(info.id)
    assert _verbs(calls) == ["create", "start"]


def test_shim_is_rewritten_when_half_written_or_for_another_runc(tmp_path: Path) -> None:
    shim = tmp_path / SHIM_NAME
    shim.write_text(shim_text("/usr/sbin/runc")[:40])  # a crash mid-write of an old agent
    shim.chmod(0o755)
    assert shim.read_text() != shim_text("/usr/sbin/runc")
    assert write_shim(tmp_path, "/usr/sbin/runc") == shim
    assert shim.read_text() == shim_text("/usr/sbin/runc")
    assert write_shim(tmp_path, "/opt/runc") == shim
    assert shim.read_text() == shim_text("/opt/runc")
    assert os.access(shim, os.X_OK)
    assert [p.name for p in tmp_path.iterdir()] == [SHIM_NAME]  # no temporary left


def test_no_shim_on_a_noexec_state_dir(tmp_path: Path) -> None:
    target = tmp_path / "noexec"
    target.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs", str(target)], check=True
    )
    try:
        assert write_shim(target, "/usr/sbin/runc") is None  # starts keep create + start
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_shim_turns_create_into_run_detached(tmp_path: Path) -> None:
    echo = tmp_path / "echo-args"
    echo.write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    echo.chmod(0o755)
    shim = write_shim(tmp_path, str(echo))
    assert shim is not None
    out = subprocess.run(
        [str(shim), "--root", "/r", "create", "--bundle", "/b c", "--pid-file", "p", "id"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out == "--root|/r|run|--detach|--bundle|/b c|--pid-file|p|id|"


def test_parse_signal() -> None:
    assert [parse_signal(s) for s in ("9", "KILL", "sigkill", "", "TERM")] == [9, 9, 9, 15, 15]
    assert parse_signal("NOPE") is None
    assert parse_signal("0") is None


def test_a_process_outside_the_cgroup_is_not_signalled() -> None:
    # A pid that is not (any more) the container's: a reused pid must not be killed.
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not signal_init(proc.pid, "/dockyard-test-none/c1", signal.SIGKILL)
        assert proc.poll() is None
        assert not signal_init(0, "/x", signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_delete_stopped_leaves_a_busy_cgroup_to_runc(
    state_root: tuple[Path, str], tmp_path: Path
) -> None:
    _, cg = state_root
    cgroup = CgroupV1(f"/{cg}/busy")
    pids = cgroup.path("pids")
    pids.mkdir(parents=True)
    runc_state = tmp_path / "runc-state"
    runc_state.mkdir()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (pids / "cgroup.procs").write_text(str(proc.pid))
        assert not delete_stopped(runc_state, cgroup)
        assert runc_state.is_dir()  # kept for `runc delete`
    finally:
        proc.kill()
        proc.wait()
    assert delete_stopped(runc_state, cgroup)
    assert not runc_state.exists()
    assert not pids.exists()


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    """A process's parent and state letter (``Z``: an unreaped zombie); None once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _our_zombie_conmons() -> list[int]:
    """conmons this process started that exited and were not reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid_and_state(int(entry.name)) == (os.getpid(), "Z"):
            with contextlib.suppress(OSError):  # reaped meanwhile
                if (entry / "comm").read_text().strip() == "conmon":
                    found.append(int(entry.name))
    return found


async def test_conmon_is_our_child_once_and_reaped_after_the_exit(env: Env) -> None:
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    record = await asyncio.to_thread(
        load_record, ContainerDir(env.state_root / "containers" / info.id)
    )
    assert record is not None and record.conmon_pid > 0
    # --sync: no double fork, conmon is the process we started (and we know its pid).
    parent_and_state = _ppid_and_state(record.conmon_pid)
    assert parent_and_state is not None and parent_and_state[0] == os.getpid()
    await env.runtime.kill(info.id, "KILL")
    assert (await env.runtime.wait(info.id)).exit_code == 137  # conmon's exit code, as before
    assert _ppid_and_state(record.conmon_pid) is None  # reaped, not a zombie
    await env.runtime.remove(info.id)


async def test_a_failed_start_reports_runc_and_leaves_no_zombie(env: Env) -> None:
    info = await env.runtime.create(env.config("/no/such/binary"))
    before = await asyncio.to_thread(_our_zombie_conmons)  # other tests' leftovers
    with pytest.raises(ContainerRuntimeError, match="no/such/binary"):
        await env.runtime.start(info.id)
    assert (await env.runtime.inspect(info.id)).state.status is ContainerStatus.DEAD
    assert set(await asyncio.to_thread(_our_zombie_conmons)) - set(before) == set()
    await env.runtime.remove(info.id)


def test_rmdir_tree_removes_child_cgroups_too(state_root: tuple[Path, str]) -> None:
    _, cg = state_root
    parent = Path("/sys/fs/cgroup/pids", cg, "nested")
    (parent / "child" / "grandchild").mkdir(parents=True)
    try:
        rmdir_tree(parent)  # one rmdir when there is no child; a walk when there is
        assert not parent.exists()
    finally:
        for d in (parent / "child" / "grandchild", parent / "child", parent):
            with contextlib.suppress(OSError):
                d.rmdir()
