"""`dockyard run -it`, `exec -it` and `attach` in a pseudo-terminal (pexpect), against a
real runc agent: typed commands reach the shell, its output comes back, `exit N` is the
CLI's exit code, the terminal size follows ours, ctrl-p ctrl-q detaches."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BIN
from tests.dockerapi.conftest import BUSYBOX, DockerAgent, image_registry, start_docker_agent
from tests.network.conftest import have_network

pexpect = pytest.importorskip("pexpect")

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


def spawn(agent: DockerAgent, *args: str, rows: int = 24, cols: int = 80) -> object:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(agent.docker_config.parent / "dockyard-config")
    child = pexpect.spawn(
        str(BIN / "dockyard"),
        ["-H", agent.agent.address, *args],
        env=env,
        dimensions=(rows, cols),
        timeout=30,
    )
    child.logfile_read = io.BytesIO()  # what the terminal showed, for failures
    return child


def expect(child: Any, pattern: Any) -> None:
    """`child.expect`, failing with what the terminal showed."""
    try:
        child.expect(pattern)
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        shown = child.logfile_read.getvalue().decode(errors="replace")
        raise AssertionError(f"no {pattern!r} on the terminal; it showed:\n{shown}") from exc


def test_run_it_types_a_command_and_exits_with_its_code(agent: DockerAgent) -> None:
    child = spawn(agent, "run", "-it", "--rm", BUSYBOX, "sh", rows=31, cols=97)
    expect(child, "# ")
    child.sendline("echo typed-''here; stty size")
    expect(child, "typed-here")
    expect(child, "31 97")
    child.sendline("exit 7")
    expect(child, pexpect.EOF)
    child.close()
    assert child.exitstatus == 7


def test_resize_follows_the_terminal(agent: DockerAgent) -> None:
    child = spawn(agent, "run", "-it", "--rm", BUSYBOX, "sh")
    expect(child, "# ")
    child.setwinsize(40, 120)  # SIGWINCH to the CLI
    child.sendline("sleep 1; stty size")
    expect(child, "40 120")
    child.sendline("exit 0")
    expect(child, pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_exec_it_and_attach_then_detach(agent: DockerAgent) -> None:
    name = f"itc{uuid.uuid4().hex[:8]}"
    started = spawn(agent, "run", "-d", "-it", "--name", name, BUSYBOX, "sh")
    expect(started, pexpect.EOF)
    started.close()
    assert started.exitstatus == 0
    try:
        child = spawn(agent, "exec", "-it", name, "sh")
        expect(child, "# ")
        child.sendline("echo in-''exec; exit 4")
        expect(child, "in-exec")
        expect(child, pexpect.EOF)
        child.close()
        assert child.exitstatus == 4

        child = spawn(agent, "attach", name)
        time.sleep(1)  # nothing shows that the CLI attached: the shell already prompted
        child.sendline("echo at''tached")
        expect(child, "attached")
        child.sendcontrol("p")
        child.sendcontrol("q")
        expect(child, "read escape sequence")
        expect(child, pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
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
