"""Container logs stay bounded: rotation by size and count on real runc and conmon,
``tail`` reading from the end, and long lines joined only up to a limit."""

from __future__ import annotations

import asyncio
import itertools
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.agent.runtime.base import LogRecord
from dockyard.agent.runtime.runc import logs as logs_module
from dockyard.agent.runtime.runc.logrotate import LogPolicy, rotate_if_due
from dockyard.agent.runtime.runc.logs import MAX_LINE_BYTES, log_files, read_log
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import Env

MiB = 1024 * 1024
MakeEnv = Callable[[LogPolicy], Awaitable[Env]]


@pytest.fixture
async def make_env(state_root: tuple[Path, str], busybox_layer: Path) -> AsyncIterator[MakeEnv]:
    root, cg = state_root
    runtimes: list[RuncRuntime] = []

    async def make(policy: LogPolicy) -> Env:
        runtime = RuncRuntime(root, cgroup_parent=cg, log_policy=policy)
        await runtime.recover()
        runtimes.append(runtime)
        return Env(runtime, busybox_layer, root, cg)

    yield make
    for runtime in runtimes:
        await runtime.close()


async def run_to_end(env: Env, script: str) -> str:
    info = await env.runtime.create(env.config("sh", "-c", script))
    await env.runtime.start(info.id)
    await asyncio.wait_for(env.runtime.wait(info.id), 120)
    return str(info.id)


async def test_a_growing_log_is_rotated_by_size_and_count(make_env: MakeEnv) -> None:
    policy = LogPolicy(max_size=64 * 1024, max_files=3, interval=0.05)
    env = await make_env(policy)
    # About 450 KB, paced so the checks keep up: seven rotations or so.
    pad = "p" * 100
    script = (
        f'i=1; while [ $i -le 3000 ]; do echo "line$i {pad}"; '
        f"[ $((i % 50)) = 0 ] && sleep 0.05; i=$((i+1)); done"
    )
    cid = await run_to_end(env, script)
    log = env.runtime._dir(cid).log
    rotated = log_files(log)
    assert [p.name for p in rotated] == ["ctr.log.2", "ctr.log.1"]
    assert not log.with_name("ctr.log.3").exists()
    for path in [*rotated, log]:  # a check comes every 0.05 s, in which ~6 KB are written
        assert path.stat().st_size <= 2 * policy.max_size
    lines = [r.data async for r in env.runtime.logs(cid)]
    numbers = [int(line.split(b" ")[0].removeprefix(b"line")) for line in lines]
    assert numbers[-1] == 3000
    assert numbers == list(range(numbers[0], 3001))  # nothing lost or repeated in what is kept
    assert numbers[0] > 1  # the oldest files were dropped
    tail = [r.data async for r in env.runtime.logs(cid, tail=4)]
    assert tail == lines[-4:]


async def test_following_a_log_goes_on_across_its_rotations(make_env: MakeEnv) -> None:
    env = await make_env(LogPolicy(max_size=16 * 1024, max_files=2, interval=0.05))
    pad = "p" * 100
    script = (
        f'sleep 0.5; i=1; while [ $i -le 1500 ]; do echo "line$i {pad}"; '
        f"[ $((i % 20)) = 0 ] && sleep 0.02; i=$((i+1)); done"
    )
    info = await env.runtime.create(env.config("sh", "-c", script))
    await env.runtime.start(info.id)
    lines = [r.data async for r in env.runtime.logs(info.id, follow=True)]
    numbers = [int(line.split(b" ")[0].removeprefix(b"line")) for line in lines]
    assert numbers == list(range(1, 1501))  # every line once, though ~10 rotations ran
    assert len(log_files(env.runtime._dir(info.id).log)) == 1


async def test_a_line_without_end_is_handed_on_in_pieces(make_env: MakeEnv) -> None:
    env = await make_env(LogPolicy(max_size=256 * MiB))
    total = 24 * MiB
    cid = await run_to_end(env, f"head -c {total} /dev/zero | tr '\\0' x; echo; echo done")
    sizes: list[int] = []
    ends: list[bool] = []
    tracemalloc.start()
    try:
        async for record in env.runtime.logs(cid):
            sizes.append(len(record.data))
            ends.append(record.data.endswith(b"\n"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) == total + 1 + len("done\n")
    assert max(sizes) < MAX_LINE_BYTES + 8192 + 1  # the limit and at most one conmon entry
    assert len(sizes) > total // (MAX_LINE_BYTES + 8192)
    assert ends[-2:] == [True, True]
    assert peak < 8 * MiB  # never the whole line, nor the whole file


def write_log(path: Path, entries: list[tuple[str, str, bytes]], start: datetime) -> None:
    """A k8s-file log as conmon writes it: (stream, F|P, content) per entry."""
    with path.open("wb") as f:
        for index, (stream, tag, content) in enumerate(entries):
            ts = (start + timedelta(microseconds=index)).isoformat().replace("+00:00", "Z")
            f.write(f"{ts} {stream} {tag} ".encode() + content + b"\n")


async def collect(path: Path, **kwargs: object) -> list[LogRecord]:
    return [r async for r in read_log(path, timestamps=True, **kwargs)]  # type: ignore[arg-type]


async def test_tail_reads_from_the_end_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    line = b"x" * 40
    entries = [("stdout", "F", line + str(i).encode()) for i in range(1_200_000)]
    write_log(log, entries, datetime(2026, 1, 1, tzinfo=UTC))
    assert log.stat().st_size > 64 * MiB
    tracemalloc.start()
    try:
        tail = await collect(log, tail=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.data for r in tail] == [
        line + str(i).encode() + b"\n" for i in range(1_199_997, 1_200_000)
    ]
    assert peak < 4 * MiB


async def test_tail_shows_a_partial_line_far_back_as_a_whole_read_does(tmp_path: Path) -> None:
    # stderr's last output lacks a newline and came long before stdout's last lines: a
    # whole read ends with it, so the tail does too.
    log = tmp_path / "ctr.log"
    entries = [("stderr", "P", b"no newline"), *[("stdout", "F", b"y" * 40)] * 20_000]
    write_log(log, entries, datetime(2026, 1, 1, tzinfo=UTC))
    tail = await collect(log, tail=2)
    assert [(r.stream, r.data) for r in tail] == [
        ("stdout", b"y" * 40 + b"\n"),
        ("stderr", b"no newline"),
    ]


entry = st.tuples(
    st.sampled_from(["stdout", "stderr"]),
    st.sampled_from(["F", "P"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"_")),
)


@settings(
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    entries=st.lists(entry, max_size=120),
    tail=st.integers(0, 30),
    cuts=st.lists(st.integers(0, 120), max_size=2),
    max_line=st.sampled_from([16, 4096]),
)
def test_tail_equals_the_end_of_a_whole_read(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    entries: list[tuple[str, str, bytes]],
    tail: int,
    cuts: list[int],
    max_line: int,
) -> None:
    # Small steps and a small join limit, so every path of the backward read is taken;
    # the entries are spread over rotated files at the cuts.
    monkeypatch.setattr(logs_module, "_TAIL_STEP", 32)
    monkeypatch.setattr(logs_module, "MAX_LINE_BYTES", max_line)
    monkeypatch.setattr(logs_module.LogParser.__init__, "__defaults__", (max_line,))
    directory = tmp_path_factory.mktemp("logs")
    log = directory / "ctr.log"
    bounds = [0, *sorted({len(entries), *(min(c, len(entries)) for c in cuts)} - {0} or {0})]
    names = [log.with_name(f"ctr.log.{i}") for i in range(len(bounds) - 2, 0, -1)] + [log]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for name, (low, high) in zip(names, itertools.pairwise(bounds), strict=True):
        write_log(name, entries[low:high], start + timedelta(seconds=low))
    whole = asyncio.run(collect(log))
    assert asyncio.run(collect(log, tail=tail)) == (whole[-tail:] if tail else [])


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    policy = LogPolicy(max_size=4096, max_files=3)
    for generation in range(5):
        log.write_bytes(str(generation).encode() * 5000)
        assert rotate_if_due(log, tmp_path / "no-conmon-ctl", policy)
    assert not log.exists()  # conmon would have opened a new one
    assert [p.name for p in log_files(log)] == ["ctr.log.2", "ctr.log.1"]
    assert log.with_name("ctr.log.1").read_bytes()[:1] == b"4"
    assert log.with_name("ctr.log.2").read_bytes()[:1] == b"3"
    log.write_bytes(b"small")
    assert not rotate_if_due(log, tmp_path / "no-conmon-ctl", policy)
    with pytest.raises(ValueError, match="at least 4096 bytes"):
        LogPolicy(max_size=10)


class _Followed:
    """A container's log (one line, `hi`) and its end, as a `run --rm` follower sees
    them: `finished()` and the `exited` event, both set by `end()`."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "ctr.log"
        write_log(self.log, [("stdout", "F", b"hi")], datetime(2026, 1, 1, tzinfo=UTC))
        self.exited = asyncio.Event()
        self.done = False

    async def finished(self) -> bool:
        return self.done

    def end(self) -> None:
        self.done = True
        self.exited.set()


async def test_a_follower_ends_when_the_container_exits_not_at_its_next_poll(
    tmp_path: Path,
) -> None:
    """`run --rm` follows the log until the exit: the exit event wakes the follower,
    which would otherwise sleep out its poll (here an hour) before seeing it."""
    followed = _Followed(tmp_path)

    async def exit_soon() -> None:
        await asyncio.sleep(0.2)
        with followed.log.open("ab") as f:  # the last words, written before the exit
            f.write(b"2026-01-01T00:00:01Z stdout F bye\n")
        followed.end()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(exit_soon())
        lines = await asyncio.wait_for(
            collect(
                followed.log,
                follow=True,
                finished=followed.finished,
                poll=3600,
                exited=followed.exited,
            ),
            30,
        )
    assert [r.data for r in lines] == [b"hi\n", b"bye\n"]


async def test_a_follower_ends_at_the_exit_after_one_thread_hop(
    tmp_path: Path, thread_hops: list[str]
) -> None:
    """On `run --rm`'s path from the exit to its answer, the follower's last read (and
    its check for a rotation) is one thread hop, and its files close without one."""
    followed = _Followed(tmp_path)
    lines = read_log(
        followed.log, follow=True, finished=followed.finished, poll=3600, exited=followed.exited
    )
    assert (await anext(lines)).data == b"hi\n"
    rest = asyncio.ensure_future(anext(lines, None))
    await asyncio.sleep(0.1)  # in its poll's wait
    thread_hops.clear()
    followed.end()
    assert await asyncio.wait_for(rest, 30) is None
    assert thread_hops == ["read_on"]


async def test_a_started_containers_log_is_first_checked_after_an_interval(
    make_env: MakeEnv, thread_hops: list[str]
) -> None:
    env = await make_env(LogPolicy(interval=0.3))
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    thread_hops.clear()
    await asyncio.sleep(0.1)
    assert "rotate_if_due" not in thread_hops  # conmon has only begun its log
    await asyncio.sleep(0.5)
    assert "rotate_if_due" in thread_hops
    await env.runtime.remove(info.id, force=True)


async def test_a_recovered_containers_log_is_checked_at_once(
    make_env: MakeEnv, thread_hops: list[str]
) -> None:
    first = await make_env(LogPolicy(interval=30))
    info = await first.runtime.create(first.config("sleep", "30"))
    await first.runtime.start(info.id)
    await first.runtime.close()  # the container runs on under its conmon
    thread_hops.clear()
    second = await make_env(LogPolicy(interval=30))  # a new agent: it recovers
    for _ in range(100):
        if "rotate_if_due" in thread_hops:
            break
        await asyncio.sleep(0.02)
    assert "rotate_if_due" in thread_hops  # not after 30 s: the log grew meanwhile
    await second.runtime.remove(info.id, force=True)
