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
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerRuntimeError, ContainerStatus
from dockyard.agent.runtime.runc import direct as direct_module
from dockyard.agent.runtime.runc import runtime as runtime_module
from dockyard.agent.runtime.runc.cgroups import CgroupV1, rmdir_tree
from dockyard.agent.runtime.runc.direct import (
    EXEC_FIFO,
    delete_stopped,
    parse_signal,
    signal_init,
    start_created,
)
from dockyard.agent.runtime.runc.records import ContainerDir, load_record
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
    # `runc create` only (no shell, no `runc start`); the exit deleted without runc.
    assert _verbs(calls) == ["create"]


async def test_stop_and_exit_need_no_runc(logged: tuple[Env, Path]) -> None:
    env, calls = logged
    info = await env.runtime.create(env.config("sh", "-c", "trap 'exit 7' TERM; sleep 30 & wait"))
    await env.runtime.start(info.id)
    await asyncio.sleep(0.2)  # the trap set
    exit_info = await env.runtime.stop(info.id, timeout=10)
    assert exit_info is not None and exit_info.exit_code == 7  # TERM reached it
    assert _verbs(calls) == ["create"]  # no `kill`, no `delete`
    assert not await asyncio.to_thread((env.state_root / "runc" / info.id).exists)
    for controller in ("memory", "pids"):
        path = Path("/sys/fs/cgroup", controller, env.cgroup_parent, info.id)
        assert not await asyncio.to_thread(path.exists), path
    # and it starts again from there (runc state and cgroups made anew)
    await env.runtime.start(info.id)
    await env.runtime.remove(info.id, force=True)
    assert _verbs(calls) == ["create", "create"]


async def test_an_attach_waiting_for_the_start_sees_the_first_output(
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
    assert _verbs(calls) == ["create"]  # connected before the release, no `runc start`


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


async def test_the_start_releases_the_created_init_without_runc_start(
    logged: tuple[Env, Path],
) -> None:
    env, calls = logged
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    fifo = env.state_root / "runc" / info.id / EXEC_FIFO
    assert not await asyncio.to_thread(fifo.exists)  # released as `runc start` does
    state = (
        await asyncio.to_thread(
            subprocess.run,
            ["runc", "--root", str(env.state_root / "runc"), "state", info.id],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    assert '"status": "running"' in state  # runc itself sees it started
    await env.runtime.remove(info.id, force=True)
    assert _verbs(calls) == ["create"]


async def test_an_init_dead_before_its_release_fails_the_start(
    logged: tuple[Env, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _ = logged
    real = runtime_module.start_created

    async def killed_first(runc_state: Path, pid: int, remove_fifo: bool = True) -> bool:
        os.kill(pid, signal.SIGKILL)
        return await real(runc_state, pid, remove_fifo)

    monkeypatch.setattr(runtime_module, "start_created", killed_first)
    info = await env.runtime.create(env.config("sleep", "30"))
    before = await asyncio.to_thread(_our_zombie_conmons)
    with pytest.raises(ContainerRuntimeError, match="exited"):
        await asyncio.wait_for(env.runtime.start(info.id), 20)  # no wait for a release
    assert (await env.runtime.inspect(info.id)).state.status is ContainerStatus.DEAD
    assert not await asyncio.to_thread((env.state_root / "runc" / info.id).exists)
    assert set(await asyncio.to_thread(_our_zombie_conmons)) - set(before) == set()
    monkeypatch.setattr(runtime_module, "start_created", real)
    await env.runtime.start(info.id)  # and it starts again from there
    await env.runtime.remove(info.id, force=True)


async def test_a_runc_without_an_exec_fifo_is_started_by_runc_start(
    logged: tuple[Env, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, calls = logged
    monkeypatch.setattr(direct_module, "EXEC_FIFO", "no-such-fifo")
    info = await env.runtime.create(env.config("sh", "-c", "echo started"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    assert [r.data async for r in env.runtime.logs(info.id)] == [b"started\n"]
    await env.runtime.remove(info.id)
    assert _verbs(calls) == ["create", "start"]


async def test_the_shim_of_an_earlier_agent_is_removed(state_root: tuple[Path, str]) -> None:
    root, cg = state_root
    shim = root / "runc-run-detached"
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(shim.write_text, "#!/bin/sh\n")
    runtime = RuncRuntime(root, cgroup_parent=cg)
    await runtime.recover()
    try:
        assert not await asyncio.to_thread(shim.exists)
    finally:
        await runtime.close()


async def test_start_created_gives_up_when_the_init_exits_unreleased(tmp_path: Path) -> None:
    # An init that exits while the agent waits on the fifo (it never wrote): the start
    # fails then, it does not wait for a writer that will never come.
    await asyncio.to_thread(os.mkfifo, tmp_path / EXEC_FIFO)
    init = await asyncio.create_subprocess_exec("sleep", "0.3")
    try:
        with pytest.raises(ContainerRuntimeError, match="exited"):
            await asyncio.wait_for(start_created(tmp_path, init.pid), 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            init.kill()
        await init.wait()


async def test_start_created_reads_the_init_byte_and_removes_the_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / EXEC_FIFO
    await asyncio.to_thread(os.mkfifo, fifo)
    # what runc init does: open for writing (waits for the reader), write "0", go on
    init = await asyncio.create_subprocess_exec("sh", "-c", f"printf 0 > {fifo}; sleep 30")
    try:
        assert await asyncio.wait_for(start_created(tmp_path, init.pid), 20)
        assert not await asyncio.to_thread(fifo.exists)
        assert init.returncode is None  # released, still running
    finally:
        init.kill()
        await init.wait()
    assert not await start_created(tmp_path, 1)  # no fifo: the caller runs `runc start`


async def test_start_created_returns_once_the_init_closed_its_end(tmp_path: Path) -> None:
    # runc init's end of the fifo is closed when it execs the user's process: the start
    # returns after that, so a stop right after it signals that process, not runc init.
    fifo, marker = tmp_path / EXEC_FIFO, tmp_path / "closing"
    await asyncio.to_thread(os.mkfifo, fifo)
    script = f"exec 3>{fifo}; printf 0 >&3; sleep 0.3; : > {marker}; exec 3>&-; sleep 30"
    init = await asyncio.create_subprocess_exec("sh", "-c", script)
    try:
        assert await asyncio.wait_for(start_created(tmp_path, init.pid), 20)
        assert await asyncio.to_thread(marker.exists)
    finally:
        init.kill()
        await init.wait()


def test_a_cgroup_is_removed_without_probing_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One rmdir per hierarchy: gone already, empty, or with a child cgroup (a walk)."""
    root = tmp_path / "cgroup"
    for controller in ("cpu", "memory", "pids", "freezer"):
        (root / controller / "dockyard").mkdir(parents=True)
    (root / "cpu" / "dockyard" / "c1").mkdir()
    (root / "memory" / "dockyard" / "c1" / "child").mkdir(parents=True)
    (root / "pids" / "dockyard" / "c1").mkdir()
    cgroup = CgroupV1("/dockyard/c1", root)
    probed: list[str] = []
    real_is_dir, real_isdir = Path.is_dir, os.path.isdir

    def is_dir(self: Path) -> bool:
        if str(self).startswith(str(root)):
            probed.append(self.relative_to(root).parts[0])
        return real_is_dir(self)

    def isdir(path: Any) -> bool:
        if str(path).startswith(str(root)):
            probed.append(Path(path).relative_to(root).parts[0])
        return real_isdir(path)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    monkeypatch.setattr(os.path, "isdir", isdir)
    assert cgroup.remove()
    monkeypatch.undo()
    assert set(probed) == {"memory"}  # only where a child cgroup made it walk
    assert not any(p.name == "c1" for p in root.rglob("*"))  # freezer: never made


def test_a_cgroup_with_something_left_in_it_stays(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "cpu" / "dockyard" / "c1").mkdir(parents=True)
    (root / "pids" / "dockyard" / "c1").mkdir(parents=True)
    (root / "pids" / "dockyard" / "c1" / "busy").write_text("")  # rmdir fails: not empty
    assert not CgroupV1("/dockyard/c1", root).remove()
    assert not (root / "cpu" / "dockyard" / "c1").exists()
    assert (root / "pids" / "dockyard" / "c1").is_dir()
