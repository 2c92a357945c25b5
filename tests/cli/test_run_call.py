"""`Containers.Run` (one call for `run --rm`) and the CLI's use of it, on a real runc agent."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest

from dockyard.v1 import containers_pb2 as pb
from dockyard.v1 import containers_pb2_grpc
from tests.cli.conftest import AgentUnderTest
from tests.conftest import BIN

pytestmark = [pytest.mark.runc, pytest.mark.registry]


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _no_containers(agent: AgentUnderTest) -> bool:
    return agent.ok("ps", "-a", "-q").stdout == ""


def test_run_call_streams_output_exit_and_removes(agent: AgentUnderTest, busybox_ref: str) -> None:
    agent.ok("image", "pull", busybox_ref)
    request = pb.CreateContainerRequest(
        image=busybox_ref, command=["sh", "-c", "echo hi; echo oops >&2; exit 3"]
    )
    with grpc.insecure_channel(agent.address) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        answers = list(stub.Run(request, timeout=60))
        kinds = [a.WhichOneof("kind") for a in answers]
        assert kinds[0] == "created" and kinds[-2:] == ["exit", "removed"], kinds
        assert answers[-1].removed == answers[0].created.id
        assert answers[-2].exit.exit_code == 3
        output = {(a.output.stream, a.output.data) for a in answers if a.HasField("output")}
        assert output == {("stdout", b"hi\n"), ("stderr", b"oops\n")}
        assert _no_containers(agent)

        # an image that is not here: NOT_FOUND before anything is created
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.Run(pb.CreateContainerRequest(image="nothing/here:1"), timeout=30))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # --rm with a restart policy is refused, as `docker run --rm --restart always`
        with pytest.raises(grpc.RpcError) as refused:
            list(
                stub.Run(
                    pb.CreateContainerRequest(
                        image=busybox_ref, restart_policy=pb.RestartPolicySpec(name="always")
                    ),
                    timeout=30,
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _no_containers(agent)


def test_run_call_removes_the_container_when_the_client_goes_away(
    agent: AgentUnderTest, busybox_ref: str
) -> None:
    agent.ok("image", "pull", busybox_ref)
    with grpc.insecure_channel(agent.address) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        call = stub.Run(pb.CreateContainerRequest(image=busybox_ref, command=["sleep", "60"]))
        created = next(call).created.id
        _wait_for(lambda: created[:12] in agent.ok("ps", "-q").stdout, "running")
        call.cancel()  # the client vanishes without a word
    _wait_for(lambda: _no_containers(agent), "the container removed")
    assert "container.removed" in agent.daemon.log()


def test_cli_run_rm_interrupted_removes_the_container(
    agent: AgentUnderTest, busybox_ref: str
) -> None:
    agent.ok("image", "pull", busybox_ref)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(agent.config_dir)
    cli = subprocess.Popen(
        [str(BIN / "dockyard"), "-H", agent.address, "run", "--rm", busybox_ref, "sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for(lambda: agent.ok("ps", "-q").stdout != "", "running")
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode != 0
    assert "interrupted: removed" in stderr
    _wait_for(lambda: _no_containers(agent), "the container removed")


def test_run_call_containers_are_removed_by_the_restarted_agent(
    agent: AgentUnderTest, busybox_ref: str
) -> None:
    """An agent SIGKILLed during two `Run` calls: the container that exited while it was
    down is removed when it starts again, the one still running once it exits."""
    agent.ok("image", "pull", busybox_ref)
    with grpc.insecure_channel(agent.address) as channel:
        stub = containers_pb2_grpc.ContainersStub(channel)
        quick = stub.Run(pb.CreateContainerRequest(image=busybox_ref, command=["sleep", "1"]))
        slow = stub.Run(pb.CreateContainerRequest(image=busybox_ref, command=["sleep", "6"]))
        created = {next(quick).created.id, next(slow).created.id}
        _wait_for(lambda: len(agent.ok("ps", "-q").stdout.split()) == 2, "both running")
        agent.daemon.kill()
    time.sleep(2)  # `sleep 1` exits while no agent runs
    agent.daemon.start()
    _wait_for(lambda: agent.cli("ps", timeout=10).returncode == 0, "the agent back")
    left = agent.ok("ps", "-a", "-q", "--no-trunc").stdout.split()
    assert len(left) <= 1 and set(left) <= created, left  # at most the running one
    _wait_for(lambda: _no_containers(agent), "both removed", timeout=30)
    assert agent.daemon.log().count("container.auto_removed") >= 2
