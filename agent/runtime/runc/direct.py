"""What ``runc start``, ``kill`` and ``delete`` do for a plain container, without a runc process.

Each runc execution costs a Go binary's start (10-25 ms of CPU on a loaded machine); a
scale-down of 100 replicas ran 200 of them. For the common cases the agent does the
work itself and falls back to runc for the rest:

- signalling the container's init: a pidfd on the pid conmon reported, checked to still
  be in the container's cgroup (so a reused pid is never signalled), then
  ``pidfd_send_signal``;
- starting a created container: ``runc create`` leaves its init blocked opening runc's
  ``exec.fifo`` for writing; ``runc start`` opens the fifo, reads the byte the init
  writes (which lets it exec the user's process) and removes the fifo (runc then
  reports the container running). The agent does the same three steps, waits until the
  init has exec'd the user's process (its end of the fifo is closed on exec), and
  watches the init's pidfd meanwhile: an init that dies before writing fails the start
  as it does ``runc start`` (which polls it every 100 ms). A runc without that fifo:
  ``runc start``;
- deleting a container whose init has exited: remove its cgroup directories (they are
  empty once the pid namespace is gone) and runc's state directory. A cgroup that still
  holds processes (a shared pid namespace) is left to ``runc delete``, which kills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from dockyard.agent.runtime.base import ContainerRuntimeError
from dockyard.agent.runtime.runc.cgroups import CgroupV1

__all__ = ["EXEC_FIFO", "delete_stopped", "parse_signal", "signal_init", "start_created"]

# runc's name for the fifo in its state directory (libcontainer's execFifoFilename).
EXEC_FIFO = "exec.fifo"


def parse_signal(value: int | str) -> int | None:
    """``9``, ``KILL``, ``SIGKILL`` → 9; ``None`` for a name this platform lacks."""
    text = str(value).strip().upper()
    if not text:
        return int(signal.SIGTERM)
    if text.isdigit():
        number = int(text)
        return number if 0 < number < signal.NSIG else None
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


def _in_cgroup(pid: int, cgroups_path: str) -> bool:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    suffix = ":" + cgroups_path.rstrip("/")
    return any(line.rstrip().endswith(suffix) for line in text.splitlines())


def signal_init(pid: int, cgroups_path: str, signum: int) -> bool:
    """Send ``signum`` to the container's init ``pid`` (blocking, no subprocess).

    Returns False, having sent nothing, when the pid is gone or is not the container's
    (not in ``cgroups_path``): the caller then asks runc.
    """
    if pid <= 0:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        # Checked after the pidfd is open: the fd pins this very process.
        if not _in_cgroup(pid, cgroups_path):
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def delete_stopped(runc_state: Path, cgroup: CgroupV1) -> bool:
    """``runc delete`` of an exited container (blocking): its cgroups, then runc's state.

    Returns False when a cgroup directory could not be removed (processes are left in
    it): runc's state is then kept for ``runc delete`` to finish the job.
    """
    if not cgroup.remove():
        return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(runc_state)
    return True


async def start_created(runc_state: Path, pid: int, remove_fifo: bool = True) -> bool:
    """``runc start`` of the container ``runc create`` made with init ``pid``: the
    init released through runc's exec fifo in ``runc_state``, the fifo removed (with
    ``remove_fifo`` False, by the caller: in its own next thread hop).

    Returns False, having done nothing, when there is no fifo to open (a runc that
    starts containers differently): the caller then runs ``runc start``.

    Raises:
        ContainerRuntimeError: the init exited before it was released.
    """
    fifo = runc_state / EXEC_FIFO
    try:
        # Non-blocking: the open does not wait for the init's end (it may have opened
        # it for writing already, or be about to), and the fd polls readable only once
        # the init wrote its byte (no hang-up before a writer came).
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        data = await _read_unless_exited(fd, pid)
    finally:
        os.close(fd)
    if not data:
        raise ContainerRuntimeError(f"runc start: the container process (pid {pid}) exited")
    if remove_fifo:
        await asyncio.to_thread(fifo.unlink, missing_ok=True)
    return True


async def _read_unless_exited(fd: int, pid: int) -> bytes:
    """What the init writes on the fifo ``fd`` until it closes its end, or b"" if process
    ``pid`` exits first without writing.

    The init's end is close-on-exec: the end of file comes when the init has exec'd the
    user's process (or died), so a signal sent once the start returns reaches that
    process, not runc's Go init (``runc start`` returns as soon as the byte is read).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    data = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 16)
        except BlockingIOError:
            return
        data.extend(chunk)
        if not chunk and not done.done():
            done.set_result(bytes(data))

    def exited() -> None:
        # It may have written its byte and exec'd a process that exited at once: what
        # it wrote is still in the fifo.
        with contextlib.suppress(BlockingIOError):
            data.extend(os.read(fd, 16))
        if not done.done():
            done.set_result(bytes(data))

    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already (or no pidfd): only the fifo can tell
        pidfd = -1
        exited()
    loop.add_reader(fd, readable)
    if pidfd >= 0:
        loop.add_reader(pidfd, exited)
    try:
        return await done
    finally:
        loop.remove_reader(fd)
        if pidfd >= 0:
            loop.remove_reader(pidfd)
            os.close(pidfd)
