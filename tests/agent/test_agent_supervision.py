"""The agent's supervision: a loop that fails ends the agent, logged, with status 1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from dockyard.agent import main as agent_main
from dockyard.agent.config import AgentConfig
from dockyard.agent.session import ControllerSession, SessionRefused
from tests.ports import free_port


def hollow_config(tmp_path: Path) -> AgentConfig:
    """An agent that needs no root: simulated containers, no TLS, no controller up."""
    return AgentConfig(
        state_dir=tmp_path / "agent",
        controllers=[f"127.0.0.1:{free_port()}"],
        listen=f"127.0.0.1:{free_port()}",
        runtime="hollow",
        insecure=True,
    )


async def test_a_loop_that_breaks_ends_the_agent_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a session loop that broke was not seen: the agent exited with status 0,
    and a broken cert-renewal or network loop was not seen at all."""

    async def broken(self: ControllerSession) -> None:
        raise RuntimeError("a bug in the session loop")

    monkeypatch.setattr(ControllerSession, "run", broken)
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(agent_main._serve(hollow_config(tmp_path)), 30)
    assert code == 1
    failed = [e for e in logs if e["event"] == "agent.failed"]
    assert [e["error"] for e in failed] == ["a bug in the session loop"]
    assert [e["event"] for e in logs][-2:] == ["agent.stopping", "agent.stopped"]


async def test_a_final_refusal_ends_the_agent_with_status_1_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def refused(self: ControllerSession) -> None:
        raise SessionRefused("controller at x refused this node: name taken")

    monkeypatch.setattr(ControllerSession, "run", refused)
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.wait_for(agent_main._serve(hollow_config(tmp_path)), 30)
    assert code == 1
    assert "refused this node: name taken" in capsys.readouterr().err
    assert not [e for e in logs if e["event"] == "agent.failed"]  # not a bug


async def test_run_until_cancels_the_work_when_stopped() -> None:
    stop, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.05, stop.set)
    await asyncio.wait_for(agent_main._run_until(stop, forever()), 5)
    assert cancelled.is_set()


async def test_run_until_raises_what_broke_the_work_at_once() -> None:
    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("broken")

    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(agent_main._run_until(asyncio.Event(), broken()), 5)
    assert raised.group_contains(RuntimeError, match="broken")


async def test_run_until_waits_for_stop_after_work_that_ends() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    await asyncio.wait_for(agent_main._run_until(stop, asyncio.sleep(0)), 5)
    assert stop.is_set()


async def test_no_task_is_left_pending_after_the_agent_stops(tmp_path: Path) -> None:
    """Every background task of the agent is owned and ended by `stop` (asyncio's own
    tasks aside): a hollow agent with a watched container and a run that ended."""
    from dockyard.agent.containers.request import ContainerRequest
    from dockyard.agent.daemon import AgentDaemon
    from dockyard.agent.images.reference import parse_reference
    from dockyard.agent.runtime.base import ContainerSpec

    before = asyncio.all_tasks()
    daemon = AgentDaemon(hollow_config(tmp_path))
    await daemon.start()
    assert daemon.worker is not None
    service = daemon.worker.executor.service  # type: ignore[attr-defined]
    spec = ContainerSpec(id="", name="c", image="busybox", lower_dirs=(), command=["sleep", "60"])
    view = await service.create(ContainerRequest(spec, parse_reference("busybox")))
    await service.start_container(view.info.id)  # its supervisor watches it
    running = asyncio.create_task(daemon.run())
    await asyncio.sleep(0.1)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await daemon.stop()
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert {t.get_name() for t in left} == set()
