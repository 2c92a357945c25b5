"""What ``runc kill`` and ``runc delete`` do for a plain container, without a runc process.

Each runc execution costs a Go binary's start (10-25 ms of CPU on a loaded machine); a
scale-down of 100 replicas ran 200 of them. For the common cases the agent does the
work itself and falls back to runc for the rest:

- signalling the container's init: a pidfd on the pid conmon reported, checked to still
  be in the container's cgroup (so a reused pid is never signalled), then
  ``pidfd_send_signal``;
- deleting a container whose init has exited: remove its cgroup directories (they are
  empty once the pid namespace is gone) and runc's state directory. A cgroup that still
  holds processes (a shared pid namespace) is left to ``runc delete``, which kills them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from dockyard.agent.runtime.runc.cgroups import CgroupV1, rmdir_tree

__all__ = ["delete_stopped", "parse_signal", "signal_init"]


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
    for path in cgroup.controllers_present():
        rmdir_tree(path)
    if cgroup.controllers_present():
        return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(runc_state)
    return True
