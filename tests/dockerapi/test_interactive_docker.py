"""Interactive containers through the Docker API, driven by clients we did not write:
Debian's docker CLI in a pseudo-terminal (pexpect) and Docker's Python SDK."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Protocol

import docker.errors
import pytest

from tests.dockerapi.conftest import BUSYBOX, DOCKER, DockerAgent
from tests.ptychild import PtyChild, PtyChildren

pytest.importorskip("pexpect")

pytestmark = [pytest.mark.timeout(120)]


class Spawn(Protocol):
    def __call__(self, *args: str, rows: int = 24, cols: int = 80) -> PtyChild: ...


@pytest.fixture
def spawn(docker_agent: DockerAgent) -> Iterator[Spawn]:
    """`docker -H AGENT ARGS` on a pty; every child is closed when the test ends."""
    with PtyChildren() as children:

        def start(*args: str, rows: int = 24, cols: int = 80) -> PtyChild:
            argv = [DOCKER, "-H", docker_agent.host, *args]
            return children.start(argv, docker_agent.env(), rows, cols)

        yield start


def test_docker_run_it_shell(spawn: Spawn) -> None:
    child = spawn("run", "-it", "--rm", BUSYBOX, "sh", rows=27, cols=91)
    child.expect("# ")
    child.sendline("echo from-''docker; stty size")
    child.expect("from-docker")
    child.expect("27 91")  # the CLI's resize after start reached the terminal
    child.until_resized(33, 101)
    child.sendline("exit 6")
    assert child.wait() == 6


def test_docker_run_i_pipes_stdin_until_it_closes(docker_agent: DockerAgent) -> None:
    done = docker_agent.docker("run", "--rm", "-i", BUSYBOX, "cat", input="piped\nlines\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "piped\nlines\n"


def test_docker_exec_it_and_attach_detach(docker_agent: DockerAgent, spawn: Spawn) -> None:
    name = f"dit{uuid.uuid4().hex[:8]}"
    docker_agent.ok("run", "-d", "-it", "--name", name, BUSYBOX, "sh")
    try:
        child = spawn("exec", "-it", name, "sh")
        child.expect("# ")
        child.sendline("echo in-''exec; exit 3")
        child.expect("in-exec")
        assert child.wait() == 3
        child.close()

        child = spawn("attach", name)
        child.until_prompt()
        child.sendline("echo at''tached")
        child.expect("attached")
        child.sendcontrol("p")
        child.sendcontrol("q")
        child.expect("read escape sequence")
        child.wait()
        child.close()
        state = docker_agent.ok("inspect", "-f", "{{.State.Running}} {{.Config.Tty}}", name)
        assert state.split() == ["true", "true"]
    finally:
        docker_agent.docker("rm", "-f", name)


def test_console_size_at_create_sizes_the_terminal_from_the_start(
    docker_agent: DockerAgent,
) -> None:
    """Docker's CLI (API 1.42+) sends HostConfig.ConsoleSize at create: the process must
    start at that size, before (and without) any resize call."""
    api = docker_agent.client().api
    created = api.create_container(
        BUSYBOX, ["stty", "size"], tty=True, host_config={"ConsoleSize": [33, 101]}
    )
    try:
        assert api.inspect_container(created["Id"])["HostConfig"]["ConsoleSize"] == [33, 101]
        api.start(created["Id"])
        assert api.wait(created["Id"], timeout=30)["StatusCode"] == 0
        assert api.logs(created["Id"]).strip() == b"33 101"
    finally:
        api.remove_container(created["Id"], force=True)
    with pytest.raises(docker.errors.APIError, match="ConsoleSize"):
        api.create_container(BUSYBOX, ["true"], tty=True, host_config={"ConsoleSize": [1, -2]})


def test_docker_logs_of_a_tty_container_are_its_raw_output(docker_agent: DockerAgent) -> None:
    """A terminal's output is one stream: dockerd sends it raw, and the CLI prints it as
    it comes (a multiplexed frame's header would show up as bytes on the screen)."""
    name = f"dlt{uuid.uuid4().hex[:8]}"
    docker_agent.ok("run", "-d", "-t", "--name", name, BUSYBOX, "echo", "tty-out")
    try:
        assert docker_agent.ok("wait", name).strip() == "0"
        assert docker_agent.ok("logs", name).replace("\r\n", "\n") == "tty-out\n"
    finally:
        docker_agent.docker("rm", "-f", name)


def test_sdk_exec_run_output_and_exit_code(docker_agent: DockerAgent) -> None:
    client = docker_agent.client()
    container = client.containers.run(BUSYBOX, ["sleep", "60"], detach=True)
    try:
        result = container.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"])
        assert result.exit_code == 4
        assert b"out\n" in result.output and b"err\n" in result.output
        split = container.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
        assert split.output == (b"o\n", b"e\n")
        tty = container.exec_run(["sh", "-c", "tty"], tty=True)
        assert tty.exit_code == 0 and tty.output.startswith(b"/dev/pts/")
    finally:
        container.remove(force=True)
        client.close()


def _read_frames(sock: socket.socket, want: bytes, timeout: float = 15) -> bytes:
    """Payloads of multiplexed frames until `want` was seen."""
    sock.settimeout(timeout)
    data = b""
    payload = b""
    while want not in payload:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while len(data) >= 8:
            size = int.from_bytes(data[4:8], "big")
            if len(data) < 8 + size:
                break
            assert data[0] in (1, 2), data[:8]
            payload += data[8 : 8 + size]
            data = data[8 + size :]
    return payload


def test_sdk_attach_socket_and_exec_socket(docker_agent: DockerAgent) -> None:
    client = docker_agent.client()
    # The SDK's stdin_open sets StdinOnce: closing the attach ends `cat`, not the sleep.
    container = client.containers.create(BUSYBOX, ["sh", "-c", "cat; sleep 60"], stdin_open=True)
    try:
        sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        raw = sock._sock  # the SDK hands back the socket of the upgraded connection
        container.start()
        raw.sendall(b"over the socket\n")
        assert b"over the socket\n" in _read_frames(raw, b"over the socket\n")
        sock.close()
        raw.close()  # closing the SDK's SocketIO leaves the socket itself open

        api = client.api
        exec_id = api.exec_create(container.id, ["sh", "-c", "read x; echo got $x"], stdin=True)
        exec_sock = api.exec_start(exec_id, socket=True)
        exec_raw = exec_sock._sock
        exec_raw.sendall(b"hello\n")
        assert b"got hello" in _read_frames(exec_raw, b"got hello")
        exec_sock.close()
        exec_raw.close()
        deadline = time.monotonic() + 10
        while api.exec_inspect(exec_id)["Running"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.exec_inspect(exec_id)["ExitCode"] == 0
    finally:
        container.remove(force=True)
        client.close()


def _raw_attach(
    agent: DockerAgent, container_id: str, upgrade: bool
) -> tuple[bytes, socket.socket]:
    """POST attach by hand on the unix socket; the response head and the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(str(agent.socket))
    headers = "Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else ""
    sock.sendall(
        f"POST /v1.41/containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
        f"HTTP/1.1\r\nHost: docker\r\n{headers}Content-Length: 0\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return head, sock


@pytest.mark.parametrize("upgrade", [True, False])
def test_hijack_head_and_half_close(docker_agent: DockerAgent, upgrade: bool) -> None:
    client = docker_agent.client()
    created = client.api.create_container_from_config(
        {"Image": BUSYBOX, "Cmd": ["cat"], "OpenStdin": True, "StdinOnce": True}
    )
    container = client.containers.get(created["Id"])
    try:
        head, sock = _raw_attach(docker_agent, container.id, upgrade)
        status = head.split(b"\r\n", 1)[0]
        lowered = head.lower()
        assert status == (b"HTTP/1.1 101 UPGRADED" if upgrade else b"HTTP/1.1 200 OK"), head
        assert b"content-type: application/vnd.docker.multiplexed-stream" in lowered
        assert b"transfer-encoding" not in lowered  # the raw stream follows the head
        if upgrade:
            assert b"upgrade: tcp" in lowered
        container.start()
        sock.sendall(b"half closed\n")
        sock.shutdown(socket.SHUT_WR)  # the CLI's CloseWrite: stdin ends, output goes on
        assert _read_frames(sock, b"half closed\n") == b"half closed\n"
        assert container.wait(timeout=15)["StatusCode"] == 0  # cat read end-of-file
        sock.close()
    finally:
        container.remove(force=True)
        client.close()
