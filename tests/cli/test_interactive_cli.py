"""`dockyard run -it`, `exec -it` and `attach` in a pseudo-terminal (pexpect), against a
real runc agent: typed commands reach the shell, its output comes back, `exit N` is the
CLI's exit code, the terminal size follows ours, ctrl-p ctrl-q detaches."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import BIN
from tests.dockerapi.conftest import BUSYBOX, DockerAgent, image_registry, start_docker_agent
from tests.network.conftest import have_network
from tests.ptychild import PtyChild

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


def spawn(agent: DockerAgent, *args: str, rows: int = 24, cols: int = 80) -> PtyChild:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    argv = [str(BIN / "dockyard"), "-H", agent.agent.address, *args]
    return PtyChild(argv, env, rows, cols)


def test_run_it_types_a_command_and_exits_with_its_code(agent: DockerAgent) -> None:
    child = spawn(agent, "run", "-it", "--rm", BUSYBOX, "sh", rows=31, cols=97)
    child.expect("# ")
    child.sendline("echo typed-''here; stty size")
    child.expect("typed-here")
    child.expect("31 97")
    child.sendline("exit 7")
    assert child.wait() == 7
    child.close()


def test_resize_follows_the_terminal(agent: DockerAgent) -> None:
    child = spawn(agent, "run", "-it", "--rm", BUSYBOX, "sh")
    child.expect("# ")
    child.setwinsize(40, 120)  # SIGWINCH to the CLI
    child.sendline("sleep 1; stty size")
    child.expect("40 120")
    child.sendline("exit 0")
    assert child.wait() == 0
    child.close()


def test_exec_it_and_attach_then_detach(agent: DockerAgent) -> None:
    name = f"itc{uuid.uuid4().hex[:8]}"
    started = spawn(agent, "run", "-d", "-it", "--name", name, BUSYBOX, "sh")
    assert started.wait() == 0
    started.close()
    try:
        child = spawn(agent, "exec", "-it", name, "sh")
        child.expect("# ")
        child.sendline("echo in-''exec; exit 4")
        child.expect("in-exec")
        assert child.wait() == 4
        child.close()

        child = spawn(agent, "attach", name)
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
