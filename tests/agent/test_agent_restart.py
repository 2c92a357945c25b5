"""Containers outlive the agent: SIGKILL or SIGTERM it, start it again on the same state."""

from __future__ import annotations

import subprocess

import pytest

from dockyard.v1 import containers_pb2 as cpb
from tests.agent.conftest import Agent, ImageRegistry, wait_until

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def runc_status(agent: Agent, container_id: str) -> str:
    done = subprocess.run(
        ["runc", "--root", str(agent.runc_root), "state", container_id],
        capture_output=True,
        text=True,
        check=False,
    )
    return "running" if '"running"' in done.stdout else done.stdout or done.stderr


def test_container_survives_agent_sigkill(agent_factory, image_registry: ImageRegistry) -> None:
    first: Agent = agent_factory().start()
    first.pull(image_registry.busybox)
    # Runs until told (a fixed sleep raced the second agent's start on a loaded machine):
    # the exit happens under the second agent, which records it.
    script = "trap 'echo after; exit 7' TERM; echo before; sleep 600 & wait"
    record = first.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox, name="survivor", command=["sh", "-c", script]
        )
    )
    first.containers.Start(cpb.ContainerRef(container="survivor"))
    wait_until(lambda: first.logs("survivor") == b"before\n", "the first line")
    first.crash()
    assert runc_status(first, record.id) == "running"
    second: Agent = agent_factory(
        state_dir=first.state_dir, port=first.port, cgroup_parent=first.cgroup_parent
    ).start()
    assert second.inspect("survivor").state.status == "running"
    second.containers.Kill(cpb.KillContainerRequest(container="survivor", signal="TERM"))
    exit_info = second.containers.Wait(cpb.ContainerRef(container="survivor"), timeout=30)
    assert exit_info.exit_code == 7
    assert second.logs(record.id) == b"before\nafter\n"
    state = second.inspect(record.id).state
    assert state.status == "exited" and state.exit_code == 7


def test_sigterm_leaves_containers_and_restarts_always(
    agent_factory, image_registry: ImageRegistry
) -> None:
    first: Agent = agent_factory().start()
    first.pull(image_registry.busybox)
    long = first.containers.Create(
        cpb.CreateContainerRequest(image=image_registry.busybox, command=["sleep", "60"])
    )
    first.containers.Start(cpb.ContainerRef(container=long.id))
    short = first.containers.Create(
        cpb.CreateContainerRequest(
            image=image_registry.busybox,
            command=["sh", "-c", "sleep 0.5; exit 1"],
            restart_policy=cpb.RestartPolicySpec(name="unless-stopped"),
        )
    )
    first.containers.Start(cpb.ContainerRef(container=short.id))
    assert first.terminate() == 0
    assert runc_status(first, long.id) == "running"
    subprocess.run(["sleep", "1"], check=True)  # `short` exits while no agent is up
    second: Agent = agent_factory(
        state_dir=first.state_dir, port=first.port, cgroup_parent=first.cgroup_parent
    ).start()
    assert second.inspect(long.id).state.status == "running"
    wait_until(
        lambda: second.inspect(short.id).state.restart_count >= 1,
        "the unless-stopped container to be started again",
    )
    second.containers.Stop(
        cpb.StopContainerRequest(container=long.id, timeout_seconds=0.2, has_timeout=True)
    )
    second.containers.Stop(cpb.StopContainerRequest(container=short.id))
