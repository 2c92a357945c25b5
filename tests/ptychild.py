"""A command on a pseudo-terminal for pexpect, started without forking the test process.

pexpect's own `spawn` forks (`forkpty`) a test process that has gRPC loaded; gRPC's
fork handlers then run in the child before it execs, and sometimes the child prints
`epoll_wait error: Bad file descriptor` and dies. Here the command is started by
`subprocess` (vfork + exec: no fork handlers) through `setsid -c`, which makes the pty
its controlling terminal (so a resize sends it SIGWINCH), and pexpect reads the master.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from typing import Any

import pexpect
import pexpect.fdpexpect

__all__ = ["PtyChild", "PtyChildren"]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyChild:
    """`argv` on a fresh pty of `rows` x `cols`; `expect` fails with what it showed."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        rows: int = 24,
        cols: int = 80,
        timeout: float = 30,
    ) -> None:
        master, slave = os.openpty()
        _set_size(master, rows, cols)
        try:
            self.proc = subprocess.Popen(
                ["setsid", "-c", *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                close_fds=True,
            )
        finally:
            os.close(slave)
        self._master = master
        self.child: Any = pexpect.fdpexpect.fdspawn(master, timeout=timeout)
        self.child.logfile_read = io.BytesIO()

    def shown(self) -> str:
        return str(self.child.logfile_read.getvalue().decode(errors="replace"))

    def expect(self, pattern: Any) -> None:
        try:
            self.child.expect(pattern)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise AssertionError(
                f"no {pattern!r} on the terminal; it showed:\n{self.shown()}"
            ) from exc

    def until_prompt(self, prompt: str = "# ", tries: int = 30) -> None:
        """Press enter until the shell prompts: an attach shows nothing by itself (the
        shell prompted before), and the client takes a moment to connect."""
        for _ in range(tries):
            self.sendline("")
            try:
                self.child.expect(prompt, timeout=1)
                return
            except pexpect.TIMEOUT:
                continue
        raise AssertionError(f"no prompt {prompt!r}; the terminal showed:\n{self.shown()}")

    def until_shown(self, command: str, pattern: str, tries: int = 20) -> None:
        """Run `command` until its output shows `pattern`: for what reaches the terminal
        asynchronously (a resize travels CLI -> API -> conmon -> pty), however loaded the
        machine; it still fails if `pattern` never comes."""
        for _ in range(tries):
            self.sendline(command)
            try:
                self.child.expect(pattern, timeout=1.5)
                return
            except pexpect.TIMEOUT:
                continue
        raise AssertionError(f"no {pattern!r}; the terminal showed:\n{self.shown()}")

    def until_resized(self, rows: int, cols: int, tries: int = 20) -> None:
        """Resize the terminal until `stty size` in the container shows it. The resize is
        sent again on every try: a client installs its SIGWINCH handler only once its first
        resize call returned (Docker's CLI does, after start), and the kernel drops a
        SIGWINCH that comes before it; a resize that never arrives still fails."""
        for attempt in range(tries):
            if attempt:
                _set_size(self._master, rows, cols + 1)  # the kernel signals changes only
            _set_size(self._master, rows, cols)
            self.sendline("stty size")
            try:
                self.child.expect(f"{rows} {cols}", timeout=1.5)
                return
            except pexpect.TIMEOUT:
                continue
        raise AssertionError(f"no '{rows} {cols}'; the terminal showed:\n{self.shown()}")

    def sendline(self, text: str) -> None:
        self.child.send(text + "\r")

    def sendcontrol(self, char: str) -> None:
        self.child.send(bytes([ord(char.lower()) & 0x1F]))

    def setwinsize(self, rows: int, cols: int) -> None:
        _set_size(self._master, rows, cols)  # the kernel sends SIGWINCH to the child

    def wait(self, timeout: float = 30) -> int:
        """Read to the end, then the exit status."""
        self.expect(pexpect.EOF)
        code = self.proc.wait(timeout)
        return code

    def close(self) -> None:
        """Kill and reap the command, close the master; a second call does nothing (the
        master's number may belong to another file by then)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._master >= 0:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = -1


class PtyChildren:
    """Starts PtyChilds and closes every one on exit, also when a test fails half-way
    (an unclosed child is an unwaited Popen: a ResourceWarning in a later test)."""

    def __init__(self) -> None:
        self._children: list[PtyChild] = []

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], rows: int = 24, cols: int = 80
    ) -> PtyChild:
        child = PtyChild(argv, env, rows, cols)
        self._children.append(child)
        return child

    def __enter__(self) -> PtyChildren:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in self._children:
            child.close()
