"""Rotate a container's log by size and count while its conmon runs.

conmon 2.1 (Debian's) only truncates: with ``--log-size-max`` it starts the file
afresh and the lines before are gone. So the agent rotates, as the kubelet does with
CRI-O: once ``ctr.log`` passes ``max_size`` it is renamed ``ctr.log.1`` (older files
shift up, the oldest beyond ``max_files`` is deleted) and conmon is told through its
control FIFO (message ``2``: reopen the log) to start a new ``ctr.log``. conmon keeps
writing to the renamed file until it reopens, so no line is lost.

conmon's own ``--log-size-max`` is not used: conmon 2.1 counts bytes since its own
last truncation, not since our reopen, so it would truncate the live file every that
many bytes written, rotation or not, and lose up to a whole file of lines each time.
The agent checks every second (a file may pass ``max_size`` by what is written in
that second); while no agent runs, the live file grows, and the first check after the
agent starts rotates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["LogPolicy", "rotate_if_due", "rotate_until"]

log = structlog.get_logger(__name__)

_REOPEN_LOGS = b"2 0 0\n"
"""conmon's control message that makes it reopen its log files (REOPEN_LOGS_EVENT)."""


@dataclass(frozen=True, slots=True)
class LogPolicy:
    """How much log one container keeps.

    Attributes:
        max_size: Bytes after which the live file is rotated.
        max_files: Files kept in all, the live one included (1: the live one alone,
            started afresh when full).
        interval: Seconds between two size checks.
    """

    max_size: int = 10 * 1024 * 1024
    max_files: int = 3
    interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_size < 4096 or self.max_files < 1 or self.interval <= 0:
            raise ValueError(f"bad log policy {self}: at least 4096 bytes and one file")


def rotate_if_due(log_path: Path, ctl_fifo: Path, policy: LogPolicy) -> bool:
    """Rotate the log when it is past `max_size` (blocking: run it in a thread).

    Returns whether it rotated.
    """
    try:
        size = log_path.stat().st_size
    except FileNotFoundError:
        return False
    if size < policy.max_size:
        return False
    if policy.max_files > 1:

        def rotated(index: int) -> Path:
            return log_path.with_name(f"{log_path.name}.{index}")

        rotated(policy.max_files - 1).unlink(missing_ok=True)
        for index in range(policy.max_files - 2, 0, -1):  # .1 -> .2, ... (oldest first)
            if rotated(index).exists():
                os.replace(rotated(index), rotated(index + 1))
        os.replace(log_path, rotated(1))
    _reopen(ctl_fifo)
    log.info("container.log_rotated", log=str(log_path), size=size, files=policy.max_files)
    return True


def _reopen(ctl_fifo: Path) -> None:
    """Ask conmon to reopen its log (with one file only: to start it afresh)."""
    try:
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # conmon is gone: nothing writes
            return
        raise
    try:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(fd, _REOPEN_LOGS)
    finally:
        os.close(fd)


async def rotate_until(
    done: Awaitable[None],
    log_path: Path,
    ctl_fifo: Path,
    policy: LogPolicy,
    check_now: bool = True,
) -> None:
    """Check and rotate the log every `policy.interval` until `done` completes; the
    first check at once, or with `check_now` False after the first interval (a container
    this agent just started: no thread hop for a log conmon has only begun)."""
    async with asyncio.TaskGroup() as group:
        finished = group.create_task(_wait(done))
        if not check_now:
            await asyncio.wait([finished], timeout=policy.interval)
        while not finished.done():
            try:
                await asyncio.to_thread(rotate_if_due, log_path, ctl_fifo, policy)
            except OSError as exc:
                log.warning("container.log_rotate_failed", log=str(log_path), error=str(exc))
            await asyncio.wait([finished], timeout=policy.interval)


async def _wait(done: Awaitable[None]) -> None:
    await done
