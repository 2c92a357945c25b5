"""`dockyard run -it`, `exec -it` and `attach` in a pseudo-terminal (pexpect), against a
real runc agent: typed commands reach the shell, its output comes back, `exit N` is the
CLI's exit code, the terminal size follows ours, ctrl-p ctrl-q detaches."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.conftest import BIN
from tests.dockerapi.conftest import BUSYBOX, DockerAgent, image_registry, start_docker_agent
from tests.network.conftest import have_network
from tests.ptychild import PtyChild, PtyChildren

pytest.importorskip("pexpect")

pytestmark = [
    pytest.mark.runc,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_network(), reason="needs root, runc, conmon and the CNI plugins"),
]

__all__ = ["image_registry"]


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, image_registry: object
) -> Iterator[DockerAgent]:
    under_test, teardown = start_docker_agent(
        tmp_path_factory.mktemp("interactive-cli"),
        image_registry,  # type: ignore[arg-type]
    )
    try:
        yield under_test
    finally:
        teardown()


class Spawn(Protocol):
    def __call__(self, *args: str, rows: int = 24, cols: int = 80) -> PtyChild: ...


@pytest.fixture
def spawn(agent: DockerAgent) -> Iterator[Spawn]:
    """`dockyard -H AGENT ARGS` on a pty; every child is closed when the test ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    with PtyChildren() as children:

        def start(*args: str, rows: int = 24, cols: int = 80) -> PtyChild:
            argv = [str(BIN / "dockyard"), "-H", agent.agent.address, *args]
            return children.start(argv, env, rows, cols)

        yield start


def test_run_it_types_a_command_and_exits_with_its_code(spawn: Spawn) -> None:
    child = spawn("run", "-it", "--rm", BUSYBOX, "sh", rows=31, cols=97)
    child.expect("# ")
    child.sendline("echo typed-''here; stty size")
    child.expect("typed-here")
    child.expect("31 97")
    child.sendline("exit 7")
    assert child.wait() == 7
    child.close()


def test_resize_follows_the_terminal(spawn: Spawn) -> None:
    child = spawn("run", "-it", "--rm", BUSYBOX, "sh")
    child.expect("# ")
    child.setwinsize(40, 120)  # SIGWINCH to the CLI
    child.until_shown("stty size", "40 120")
    child.sendline("exit 0")
    assert child.wait() == 0
    child.close()


def test_exec_it_and_attach_then_detach(agent: DockerAgent, spawn: Spawn) -> None:
    name = f"itc{uuid.uuid4().hex[:8]}"
    started = spawn("run", "-d", "-it", "--name", name, BUSYBOX, "sh")
    assert started.wait() == 0
    started.close()
    try:
        child = spawn("exec", "-it", name, "sh")
        child.expect("# ")
        child.sendline("echo in-''exec; exit 4")
        child.expect("in-exec")
        assert child.wait() == 4
        child.close()

        child = spawn("attach", name)
        child.until_prompt()
        child.sendline("echo at''tached")
        child.expect("attached")
        child.sendcontrol("p")
        child.sendcontrol("q")
        child.expect("read escape sequence")
        assert child.wait() == 0
        child.close()
        ps = agent.docker("ps", "--filter", f"name={name}", "--format", "{{.Status}}")
        assert ps.stdout.startswith("Up"), ps  # detaching left it running
    finally:
        agent.docker("rm", "-f", name)


def test_run_i_pipes_stdin_and_ends_with_it(agent: DockerAgent) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    done = subprocess.run(
        [str(BIN / "dockyard"), "-H", agent.agent.address, "run", "-i", "--rm", BUSYBOX, "cat"],
        input=b"one\ntwo\n",
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"one\ntwo\n"


def _conmon_sockets(agent: DockerAgent, container_id: str) -> int:
    base = agent.agent.state_dir / "runtime" / "containers" / container_id
    pid = int(json.loads((base / "container.json").read_text())["conmon_pid"])
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:  # closed while we looked
            continue
    return count


def _wait_for(predicate: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_grpc_attach_released_when_the_client_vanishes_and_input_bounded(
    agent: DockerAgent,
) -> None:
    import queue

    import grpc

    from dockyard.v1 import containers_pb2 as pb
    from dockyard.v1 import containers_pb2_grpc

    name = f"itg{uuid.uuid4().hex[:8]}"
    # It keeps printing: conmon lets go of a client's socket when a write to it fails.
    ticking = ["sh", "-c", "while :; do echo tick; sleep 0.2; done"]
    container_id = agent.ok("run", "-d", "-it", "--name", name, BUSYBOX, *ticking).strip()
    try:
        before = _conmon_sockets(agent, container_id)
        inputs: queue.Queue[Any] = queue.Queue()
        inputs.put(pb.AttachInput(start=pb.AttachStart(container=name, stdin=True)))

        def requests() -> Any:
            while (message := inputs.get()) is not None:
                yield message

        with grpc.insecure_channel(agent.agent.address) as channel:
            stub = containers_pb2_grpc.ContainersStub(channel)
            call = stub.Attach(requests())
            assert next(call).attached
            _wait_for(lambda: _conmon_sockets(agent, container_id) == before + 1, "attached")
            call.cancel()  # the client vanishes without a word
            _wait_for(lambda: _conmon_sockets(agent, container_id) == before, "released")
            assert "container.attach_released" in agent.agent.log()
            inputs.put(None)

            too_big = iter(
                [
                    pb.AttachInput(start=pb.AttachStart(container=name, stdin=True)),
                    pb.AttachInput(stdin=b"x" * (64 * 1024 + 1)),
                ]
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Attach(too_big, timeout=20))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "64 KiB" in (refused.value.details() or "")
        _wait_for(lambda: _conmon_sockets(agent, container_id) == before, "released again")
        assert agent.ok("inspect", "-f", "{{.State.Running}}", name).strip() == "true"
    finally:
        agent.docker("rm", "-f", name)
