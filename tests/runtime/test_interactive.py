"""Interactive containers under runc: a terminal, stdin, attach, resize, exec -it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dockyard.agent.runtime.base import StdioSession

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


class Reader:
    """Collects a session's output in the background; waits for text to appear."""

    def __init__(self, session: StdioSession) -> None:
        self.data = b""
        self.streams: set[str] = set()
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(session))

    async def _run(self, session: StdioSession) -> None:
        async for chunk in session.output():
            self.data += chunk.data
            self.streams.add(chunk.stream)
            self.changed.set()

    async def expect(self, text: bytes, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.data:
                self.changed.clear()
                await self.changed.wait()


async def test_attach_tty_before_start_echo_resize_exit(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", tty=True, open_stdin=True, stdin_once=True))
    session = await env.runtime.attach(info.id)  # before start, as `docker run -it`
    assert session.tty
    await env.runtime.start(info.id)
    reader = Reader(session)
    await env.runtime.resize(info.id, 33, 77)
    await reader.expect(b"# ")
    await session.write(b"echo h''i; stty size; tty\n")
    await reader.expect(b"hi\r\n")
    await reader.expect(b"33 77")
    await reader.expect(b"/dev/pts/")
    await session.write(b"exit 3\n")
    assert (await asyncio.wait_for(env.runtime.wait(info.id), 10)).exit_code == 3
    await asyncio.wait_for(reader.task, 5)
    lines = b"".join([r.data async for r in env.runtime.logs(info.id)])
    assert b"hi" in lines  # conmon logs a terminal's output too
    await env.runtime.remove(info.id, force=True)


async def test_detach_leaves_it_running_and_attach_again(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", tty=True, open_stdin=True))
    await env.runtime.start(info.id)
    first = await env.runtime.attach(info.id)
    reader = Reader(first)
    await first.write(b"echo o''ne\n")
    await reader.expect(b"one")
    await first.close()
    await asyncio.wait_for(reader.task, 5)
    assert (await env.runtime.inspect(info.id)).state.status == "running"
    second = await env.runtime.attach(info.id)
    reader = Reader(second)
    await second.write(b"echo t''wo\n")
    await reader.expect(b"two")  # stdin stayed open: no StdinOnce
    await second.write(b"exit 0\n")
    assert (await asyncio.wait_for(env.runtime.wait(info.id), 10)).exit_code == 0
    await env.runtime.remove(info.id, force=True)


async def test_stdin_once_closing_stdin_ends_cat(env: Any) -> None:
    info = await env.runtime.create(env.config("cat", open_stdin=True, stdin_once=True))
    session = await env.runtime.attach(info.id)
    await env.runtime.start(info.id)
    reader = Reader(session)
    await session.write(b"piped line\n")
    await reader.expect(b"piped line\n")
    await session.close_stdin()
    assert (await asyncio.wait_for(env.runtime.wait(info.id), 10)).exit_code == 0
    await asyncio.wait_for(reader.task, 5)
    assert reader.streams == {"stdout"}
    await env.runtime.remove(info.id, force=True)


async def test_attach_keeps_stdout_and_stderr_apart(env: Any) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "sleep 0.3; echo out; echo err >&2"))
    session = await env.runtime.attach(info.id)
    await env.runtime.start(info.id)
    chunks = [c async for c in session.output()]
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"out\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
    await env.runtime.remove(info.id, force=True)


async def test_exec_with_tty_and_resize(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "60"))
    await env.runtime.start(info.id)
    session = await env.runtime.exec_interactive(info.id, ["sh"], tty=True)
    reader = Reader(session)
    await session.resize(21, 55)
    await reader.expect(b"# ")  # the prompt: the shell is up
    await session.write(b"echo e''x; stty size; echo $TERM; exit 5\n")
    assert await asyncio.wait_for(session.wait(), 10) == 5
    await asyncio.wait_for(reader.task, 5)
    # `runc exec -t` clears ONLCR on the container's terminal once it has its master,
    # which may be after the shell started: a shell that read its terminal's settings
    # before keeps ONLCR, and its lines end in \r\r\n (a terminal shows them alike)
    assert b"ex\r\n" in reader.data.replace(b"\r\r\n", b"\r\n")
    assert b"21 55" in reader.data
    assert b"xterm" in reader.data
    await session.close()
    await env.runtime.remove(info.id, force=True)


async def test_exec_with_stdin_no_tty(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "60"))
    await env.runtime.start(info.id)
    session = await env.runtime.exec_interactive(info.id, ["sh", "-c", "cat; echo err >&2"])
    assert not session.tty
    chunks: list[Any] = []

    async def read() -> None:
        chunks.extend([c async for c in session.output()])

    task = asyncio.create_task(read())
    await session.write(b"through stdin\n")
    await session.close_stdin()
    assert await asyncio.wait_for(session.wait(), 10) == 0
    await asyncio.wait_for(task, 5)
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"through stdin\n"
    assert b"".join(c.data for c in chunks if c.stream == "stderr") == b"err\n"
    await env.runtime.remove(info.id, force=True)


async def test_resize_refuses_out_of_range(env: Any) -> None:
    from dockyard.agent.runtime.base import InvalidConfig

    info = await env.runtime.create(env.config("sleep", "60", tty=True))
    await env.runtime.start(info.id)
    with pytest.raises(InvalidConfig, match="height"):
        await env.runtime.resize(info.id, 5000, 80)
    await env.runtime.remove(info.id, force=True)


async def test_pending_attach_ends_when_the_container_is_removed(env: Any) -> None:
    from dockyard.agent.runtime.base import ContainerNotFound

    info = await env.runtime.create(env.config("sh", tty=True, open_stdin=True))
    session = await env.runtime.attach(info.id)
    await env.runtime.remove(info.id)
    with pytest.raises(ContainerNotFound):
        async with asyncio.timeout(5):
            [c async for c in session.output()]
    await session.close()
