"""A container start takes its blocking steps in the runtime's own threads: it does not
queue behind the creates a scale-up puts in asyncio's default executor all at once (with
that executor's only worker held busy here, deterministically), no step of it runs on
the event loop's thread, and it creates no file there (conmon's stderr file is made by
the create, in its thread).
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc import runtime as runtime_module
from dockyard.agent.runtime.runc.lane import ThreadLane
from tests.busy_worker import BusyWorker
from tests.runtime.conftest import Env

pytestmark = [pytest.mark.timeout(90)]

# A start that needed the held worker would wait for the hold's end (30 s): this bound
# only tells that apart from a start that goes on, however slow the machine.
LIVENESS = 20.0


@pytest.mark.runc
async def test_a_start_does_not_wait_for_the_default_executor(
    busy: BusyWorker, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:  # busy first: the runtime closes (through that executor) before it ends
    steps: list[tuple[str, bool]] = []  # (step, on the loop's thread)
    loop_thread = threading.get_ident()
    for name in ("_prepare_start", "_released"):
        real: Callable[..., Any] = getattr(runtime_module, name)

        def spy(*args: Any, _real: Callable[..., Any] = real, _name: str = name) -> Any:
            steps.append((_name, threading.get_ident() == loop_thread))
            return _real(*args)

        monkeypatch.setattr(runtime_module, name, spy)
    first = await env.runtime.create(env.config("sleep", "60"))
    second = await env.runtime.create(env.config("sleep", "60"))
    for info in (first, second):  # a restart prepares (a start right after a create not)
        await env.runtime.start(info.id)
        await env.runtime.stop(info.id, 0)
    assert steps == [("_released", False)] * 2
    steps.clear()
    async with busy.hold():  # the default executor's only worker: as if creates queued
        await asyncio.wait_for(env.runtime.start(first.id), LIVENESS)
        assert (await env.runtime.inspect(first.id)).state.status is ContainerStatus.RUNNING
        await asyncio.wait_for(env.runtime.start(second.id), LIVENESS)  # the lane's threads
    assert steps == [("_prepare_start", False), ("_released", False)] * 2
    for info in (first, second):
        await env.runtime.stop(info.id, 0)
        await env.runtime.remove(info.id)


@pytest.mark.runc
async def test_a_start_creates_no_file_on_the_loop(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []  # files created by the loop's thread while `on`
    loop_thread, on = threading.get_ident(), False
    real_open, real_os_open = builtins.open, os.open

    def note(path: Any, creates: bool) -> None:
        if not (on and creates and threading.get_ident() == loop_thread):
            return
        if isinstance(path, str | bytes | os.PathLike) and not os.path.lexists(path):
            made.append(os.fsdecode(path).rsplit("/", 1)[-1])

    def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        note(file, any(c in mode for c in "wax"))
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        note(path, bool(flags & os.O_CREAT))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    info = await env.runtime.create(env.config("sleep", "60"))
    on = True
    await env.runtime.start(info.id)
    on = False
    monkeypatch.undo()
    assert made == []
    await env.runtime.stop(info.id, 0)
    await env.runtime.remove(info.id)


async def test_the_lane_runs_calls_in_its_threads_with_the_callers_context() -> None:
    lane = ThreadLane("test-lane", threads=2)
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="")
    var.set("caller's")

    def where(suffix: str) -> tuple[str, str]:
        return threading.current_thread().name, var.get() + suffix

    try:
        names = await asyncio.gather(*(lane.run(where, "!") for _ in range(6)))
    finally:
        lane.close()
    assert {value for _, value in names} == {"caller's!"}
    assert {name.rsplit("_", 1)[0] for name, _ in names} == {"test-lane"}
    assert len({name for name, _ in names}) <= 2


async def test_a_closed_lane_runs_again_in_new_threads() -> None:
    lane = ThreadLane("test-lane2", threads=1)
    before = await lane.run(threading.get_ident)
    lane.close()
    after = await lane.run(threading.get_ident)  # a runtime recovered after its close
    lane.close()
    assert before != threading.get_ident() and after != threading.get_ident()
