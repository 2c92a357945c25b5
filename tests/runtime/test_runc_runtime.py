"""The runc runtime against real runc, conmon and overlayfs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.runtime.base import (
    ContainerNotFound,
    ContainerRuntime,
    ContainerStatus,
    InvalidConfig,
    NameConflict,
    VolumeMount,
)
from dockyard.agent.runtime.runc.runtime import RuncRuntime

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


async def run(e: Any, /, *command: str, **kwargs: object) -> tuple[int, bytes, bool]:
    """Create, start, wait; return exit code, stdout+stderr and oom flag."""
    rt = e.runtime
    info = await rt.create(e.config(*command, **kwargs))
    await rt.start(info.id)
    exit_info = await rt.wait(info.id)
    out = b"".join([r.data async for r in rt.logs(info.id)])
    return exit_info.exit_code, out, exit_info.oom_killed


async def test_is_a_container_runtime(env: Any) -> None:
    assert isinstance(env.runtime, ContainerRuntime)


async def test_exit_code(env: Any) -> None:
    code, _, oom = await run(env, "sh", "-c", "exit 3")
    assert (code, oom) == (3, False)


async def test_image_cmd_and_env(env: Any) -> None:
    code, out, _ = await run(env, "sh", "-c", "echo $IMAGE_VAR $MINE $PATH", env=["MINE=x"])
    assert code == 0
    assert out == b"1 x /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"


async def test_workdir_and_hostname(env: Any) -> None:
    code, out, _ = await run(env, "sh", "-c", "pwd; hostname", workdir="/tmp", hostname="box")
    assert code == 0
    assert out == b"/tmp\nbox\n"


async def test_user(env: Any) -> None:
    _, out, _ = await run(env, "id", user="nobody")
    assert out.startswith(b"uid=65534")
    _, out, _ = await run(env, "id", "-u", user="nobody")
    assert out == b"65534\n"
    _, out, _ = await run(env, "id", user="1000:50")
    assert out.startswith(b"uid=1000 gid=50")


async def test_unknown_user_is_a_clear_error(env: Any) -> None:
    with pytest.raises(InvalidConfig, match="unable to find user ghost"):
        await env.runtime.create(env.config("true", user="ghost"))
    assert await env.runtime.list(all=True) == []


async def test_name_conflict_and_not_found(env: Any) -> None:
    await env.runtime.create(env.config("true", name="web"))
    with pytest.raises(NameConflict, match="web"):
        await env.runtime.create(env.config("true", name="web"))
    with pytest.raises(ContainerNotFound, match="nope"):
        await env.runtime.inspect("nope")
    assert (await env.runtime.inspect("web")).state.status is ContainerStatus.CREATED


async def test_oom_kill_is_reported(env: Any, tmp_path: Path, monkeypatch: Any) -> None:
    workdir = tmp_path / "agent-cwd"  # the agent's working directory
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    script = "x=$(head -c 64m /dev/zero | tr '\\0' a); echo survived"
    code, out, oom = await run(env, "sh", "-c", script, memory_bytes=8 * 1024 * 1024)
    assert (code, oom) == (137, True)
    assert b"survived" not in out
    # conmon's `oom` marker stays in the container's bundle, not in the agent's cwd
    assert list(workdir.iterdir()) == []


async def test_pids_limit_bounds_a_fork_bomb(env: Any) -> None:
    bomb = "sh -c 'for i in $(seq 40); do sleep 3 & done'; echo bounded; exec sleep 2"
    info = await env.runtime.create(env.config("sh", "-c", bomb, pids_limit=10))
    await env.runtime.start(info.id)
    await asyncio.sleep(0.5)
    stats = await env.runtime.stats(info.id)
    assert 1 < stats.pids <= 10
    await env.runtime.stop(info.id, timeout=0.2)
    out = b"".join([r.data async for r in env.runtime.logs(info.id)])
    assert b"can't fork" in out
    assert b"bounded" in out


async def test_read_only_root(env: Any) -> None:
    code, out, _ = await run(env, "sh", "-c", "touch /x", read_only=True)
    assert code != 0
    assert b"Read-only file system" in out


async def test_layer_isolation(env: Any) -> None:
    code, _, _ = await run(env, "sh", "-c", "echo mine > /tmp/f; rm /bin/ls")
    assert code == 0
    code, out, _ = await run(env, "sh", "-c", "cat /tmp/f; ls / >/dev/null && echo ls-ok")
    # stdout and stderr come through two pipes: their order in `out` is not fixed.
    assert b"ls-ok\n" in out
    assert b"can't open '/tmp/f'" in out
    assert b"mine" not in out
    assert not (env.layer / "tmp" / "f").exists()
    assert (env.layer / "bin" / "ls").is_symlink()


async def test_volume(env: Any, tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "in").write_text("hello\n")
    volumes = [VolumeMount(tmp_path / "vol", "/data"), VolumeMount(tmp_path / "vol", "/ro", True)]
    code, out, _ = await run(
        env, "sh", "-c", "cat /data/in; echo w > /data/out; echo x > /ro/no", volumes=volumes
    )
    assert code != 0
    assert out.startswith(b"hello\n")
    assert (tmp_path / "vol" / "out").read_text() == "w\n"


async def test_logs_tail_timestamps_and_streams(env: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    script = "for i in 1 2 3 4 5; do echo out$i; done; echo err >&2; printf partial"
    info = await env.runtime.create(env.config("sh", "-c", script))
    await env.runtime.start(info.id)
    await env.runtime.wait(info.id)
    records = [r async for r in env.runtime.logs(info.id)]
    assert [r.data for r in records if r.stream == "stdout"] == [
        b"out1\n",
        b"out2\n",
        b"out3\n",
        b"out4\n",
        b"out5\n",
        b"partial",
    ]
    assert [r.data for r in records if r.stream == "stderr"] == [b"err\n"]
    assert all(r.timestamp is None for r in records)
    tail = [r async for r in env.runtime.logs(info.id, tail=2, timestamps=True)]
    assert len(tail) == 2
    assert all(r.timestamp is not None and r.timestamp >= before for r in tail)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert [r async for r in env.runtime.logs(info.id, since=future)] == []


async def test_logs_follow(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "echo a; sleep 0.5; echo b"))
    await env.runtime.start(info.id)
    lines = [r.data async for r in env.runtime.logs(info.id, follow=True)]
    assert lines == [b"a\n", b"b\n"]


async def test_stop_with_short_timeout(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "trap '' TERM; sleep 30"))
    await env.runtime.start(info.id)
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await env.runtime.stop(info.id, timeout=0.3)
    assert loop.time() - t0 < 3
    assert result is not None
    assert result.exit_code == 137
    assert (await env.runtime.inspect(info.id)).state.status is ContainerStatus.EXITED


async def test_stop_sleep_with_term(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    result = await env.runtime.stop(info.id, timeout=5)
    assert result is not None
    assert result.exit_code in (143, 137)


async def test_exec_output_and_exit_code(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "30", env=["CTR=1"]))
    await env.runtime.start(info.id)
    session = await env.runtime.exec(
        info.id,
        ["sh", "-c", "echo $CTR $X; pwd; id -u; echo oops >&2; exit 5"],
        env=["X=2"],
        workdir="/tmp",
        user="nobody",
    )
    result = await session.collect()
    assert result.exit_code == 5
    assert result.stdout == b"1 2\n/tmp\n65534\n"
    assert result.stderr == b"oops\n"
    session = await env.runtime.exec(info.id, ["sh", "-c", "echo streamed"])
    chunks = [c async for c in session.output()]
    assert await session.wait() == 0
    assert b"".join(c.data for c in chunks) == b"streamed\n"
    await env.runtime.remove(info.id, force=True)
    assert await env.runtime.list(all=True) == []


async def test_stats(env: Any) -> None:
    info = await env.runtime.create(
        env.config("sh", "-c", "while :; do :; done", memory_bytes=64 << 20, nano_cpus=500_000_000)
    )
    await env.runtime.start(info.id)
    stats = await env.runtime.stats(info.id)
    assert stats.memory_limit == 64 << 20
    assert 0 < stats.memory_usage < 64 << 20
    assert stats.pids >= 1
    await asyncio.sleep(0.5)
    stats = await env.runtime.stats(info.id)
    assert stats.cpu_usage_ns > 0
    # limited to half a CPU; a loaded machine may give the loop much less (never more)
    assert 0 < stats.cpu_percent < 80
    await env.runtime.remove(info.id, force=True)


async def test_restart_counts(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "echo run"))
    await env.runtime.start(info.id)
    await env.runtime.wait(info.id)
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    state = (await env.runtime.inspect(info.id)).state
    assert state.restart_count == 1
    assert [r.data async for r in env.runtime.logs(info.id)] == [b"run\n", b"run\n"]


async def test_remove_running_needs_force(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    with pytest.raises(Exception, match="stop it first"):
        await env.runtime.remove(info.id)
    await env.runtime.remove(info.id, force=True)
    for path in (
        env.state_root / "containers" / info.id,
        Path("/sys/fs/cgroup/memory", env.cgroup_parent, info.id),
        Path("/sys/fs/cgroup/pids", env.cgroup_parent, info.id),
    ):
        assert not await asyncio.to_thread(path.exists), path


async def test_logs_and_exit_survive_agent_restart(env: Any) -> None:
    rt = env.runtime
    info = await rt.create(env.config("sh", "-c", "echo a; sleep 2; echo b; exit 7"))
    await rt.start(info.id)
    await rt.close()  # the agent dies: nothing stops the container
    del rt
    await asyncio.sleep(0.2)
    fresh = RuncRuntime(env.state_root, cgroup_parent=env.cgroup_parent)
    env.runtime = fresh
    found = await fresh.recover()
    assert [c.id for c in found] == [info.id]
    assert found[0].state.status is ContainerStatus.RUNNING
    exit_info = await fresh.wait(info.id)
    assert exit_info.exit_code == 7
    assert [r.data async for r in fresh.logs(info.id)] == [b"a\n", b"b\n"]


async def test_exit_while_agent_down(env: Any) -> None:
    rt = env.runtime
    info = await rt.create(env.config("sh", "-c", "echo bye; exit 4", name="short"))
    await rt.start(info.id)
    await rt.close()
    await asyncio.sleep(0.5)  # exits while nobody watches
    fresh = RuncRuntime(env.state_root, cgroup_parent=env.cgroup_parent)
    env.runtime = fresh
    await fresh.recover()
    state = (await fresh.inspect("short")).state
    assert (state.status, state.exit_code) == (ContainerStatus.EXITED, 4)
    await fresh.remove("short")
