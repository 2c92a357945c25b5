"""`run -it`, `exec -it`, `attach`: the terminal side of the agent's Attach and
ExecInteractive streams.

The local terminal goes to raw mode (restored on every way out), stdin is read by a
thread into the request stream, SIGWINCH becomes a resize message, output goes straight
to stdout/stderr. The agent finds the detach keys in the input and answers `detached`;
we then print docker's `read escape sequence`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dockyard.cli.client import Target, stream

__all__ = ["Outcome", "attach_stream", "exec_stream", "raw_terminal", "terminal_size"]

AGENT = "agent"
_READ_CHUNK = 4096
_QUEUE_SLOTS = 64
"""Input messages waiting for gRPC: the stdin thread blocks when they are not sent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a stream ended: the exit code, or detached (code None)."""

    exit_code: int | None
    detached: bool


def terminal_size() -> tuple[int, int] | None:
    """(rows, columns) of our terminal, or None when stdout is not one."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return None
    return size.lines, size.columns


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Raw mode on stdin while inside (nothing if not `enabled` or not a terminal)."""
    fd = sys.stdin.fileno()
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Input:
    """The request stream: a start message, then stdin and resizes as they come."""

    def __init__(self, messages: Any, start: Any, with_stdin: bool) -> None:
        self._pb = messages
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_SLOTS)
        self._queue.put(start)
        self._done = threading.Event()
        if with_stdin:
            threading.Thread(target=self._read_stdin, daemon=True).start()

    def _read_stdin(self) -> None:
        fd = sys.stdin.fileno()
        while not self._done.is_set():
            try:
                data = os.read(fd, _READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self._put(self._pb(close_stdin=True))
                return
            self._put(self._pb(stdin=data))

    def _put(self, message: Any) -> None:
        while not self._done.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(message, timeout=0.2)
                return

    def resize(self, rows: int, columns: int, size_type: Any) -> None:
        """Queue a resize (from the SIGWINCH handler: never blocks)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._pb(resize=size_type(height=rows, width=columns)))

    def close(self) -> None:
        """End the request stream."""
        self._done.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def __iter__(self) -> Iterator[Any]:
        while True:
            message = self._queue.get()
            if message is None or self._done.is_set():
                return
            yield message


def _run(
    target: Target, method: str, inputs: _Input, tty_mode: bool, on_attached: Any = None
) -> Outcome:
    from dockyard.cli.commands.container_run import containers_stub
    from dockyard.v1.containers_pb2 import TerminalSize

    previous = None
    if tty_mode and os.isatty(sys.stdout.fileno()):

        def on_winch(_signum: int, _frame: Any) -> None:
            size = terminal_size()
            if size is not None:
                inputs.resize(*size, TerminalSize)

        previous = signal.signal(signal.SIGWINCH, on_winch)
    code: int | None = None
    detached = False
    try:
        for message in stream(target, containers_stub, method, iter(inputs), what=AGENT):
            kind = message.WhichOneof("output")
            if kind == "attached" and on_attached is not None:
                on_attached()
            elif kind == "stdout":
                os.write(sys.stdout.fileno(), message.stdout)
            elif kind == "stderr":
                os.write(sys.stderr.fileno(), message.stderr)
            elif kind == "exit_code":
                code = message.exit_code
            elif kind == "detached":
                detached = True
    finally:
        inputs.close()
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
    return Outcome(code, detached)


def _size_message(tty_mode: bool) -> Any:
    from dockyard.v1.containers_pb2 import TerminalSize

    size = terminal_size() if tty_mode else None
    return TerminalSize(height=size[0], width=size[1]) if size else None


def attach_stream(
    target: Target,
    container: str,
    *,
    stdin: bool,
    tty_mode: bool,
    detach_keys: str = "",
    on_attached: Any = None,
) -> Outcome:
    """Attach to `container` until it exits or we detach. `on_attached` runs once the
    agent has registered us (a container not started yet: start it there)."""
    from dockyard.v1.containers_pb2 import AttachInput, AttachStart

    start = AttachStart(
        container=container, stdin=stdin, detach_keys=detach_keys, size=_size_message(tty_mode)
    )
    inputs = _Input(AttachInput, AttachInput(start=start), stdin)
    return _run(target, "Attach", inputs, tty_mode, on_attached)


def exec_stream(
    target: Target,
    container: str,
    command: list[str],
    *,
    env: list[str],
    workdir: str,
    user: str,
    tty_mode: bool,
    detach_keys: str = "",
) -> Outcome:
    """Run `command` in `container` with our stdin (and a terminal with `tty_mode`)."""
    from dockyard.v1.containers_pb2 import ExecInput, ExecStart

    start = ExecStart(
        container=container,
        command=command,
        env=env,
        workdir=workdir,
        user=user,
        tty=tty_mode,
        detach_keys=detach_keys,
        size=_size_message(tty_mode),
    )
    return _run(
        target, "ExecInteractive", _Input(ExecInput, ExecInput(start=start), True), tty_mode
    )
