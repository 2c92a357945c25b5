"""Launch conmon, the per-container monitor Podman and CRI-O use.

conmon runs ``runc create``, holds the container's stdio and writes it to a k8s-file log,
writes the exit code to ``--exit-dir/<id>`` and ``--persist-dir/exit`` (and ``oom`` there
on a cgroup v1 OOM event), and outlives the agent: it double-forks away from us. It tells
us the container's pid (or runc's error) as one JSON line on the fd named by
``_OCI_SYNCPIPE``, as ``libpod/oci_conmon_linux.go`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from dockyard.agent.runtime.base import ContainerRuntimeError

__all__ = ["ConmonPaths", "StdioMode", "conmon_alive", "launch_conmon", "wait_pid_exit"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ConmonPaths:
    """Where conmon reads and writes for one container."""

    bundle: Path
    log: Path
    exit_dir: Path
    persist_dir: Path
    pid_file: Path
    conmon_pid_file: Path
    socket_dir: Path
    conmon_log: Path


@dataclass(frozen=True, slots=True)
class StdioMode:
    """How conmon wires the container's stdio."""

    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False

    def conmon_args(self) -> list[str]:
        """conmon's flags: ``-t`` (console socket), ``-i`` (stdin from the attach socket);
        without ``--leave-stdin-open`` conmon closes the container's stdin when an attach
        client goes away, which is Docker's ``StdinOnce``."""
        args = ["-t"] if self.tty else []
        if self.open_stdin:
            args.append("-i")
            if not self.stdin_once:
                args.append("--leave-stdin-open")
        return args


def _read_sync(fd: int) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


async def launch_conmon(
    *,
    conmon: str,
    runc: str,
    runc_root: Path,
    container_id: str,
    paths: ConmonPaths,
    stdio: StdioMode | None = None,
    timeout: float = 30.0,
) -> tuple[int, int]:
    """Start conmon for ``container_id`` and wait until ``runc create`` is done.

    ``stdio`` asks for a terminal (conmon's console socket receives the pty's master
    from runc) and an open stdin fed from conmon's ``attach`` socket.

    Returns:
        ``(container_pid, conmon_pid)``.

    Raises:
        ContainerRuntimeError: conmon or ``runc create`` failed; the message has runc's.
    """
    for d in (paths.exit_dir, paths.persist_dir, paths.socket_dir):
        d.mkdir(parents=True, exist_ok=True)
    args = [
        conmon,
        "--api-version",
        "1",
        "-c",
        container_id,
        "-u",
        container_id,
        "-n",
        container_id,
        "-r",
        runc,
        "-b",
        str(paths.bundle),
        "-p",
        str(paths.pid_file),
        "-P",
        str(paths.conmon_pid_file),
        # No --log-size-max: conmon 2.1 truncates the live file every that many bytes
        # written, also after the agent rotated it (see logrotate), and lines are lost.
        "-l",
        f"k8s-file:{paths.log}",
        "--exit-dir",
        str(paths.exit_dir),
        "-0",
        str(paths.persist_dir),
        "--socket-dir-path",
        str(paths.socket_dir),
        "--runtime-arg",
        "--root",
        "--runtime-arg",
        str(runc_root),
        "--log-level",
        "error",
        "--no-sync-log",
        *(stdio or StdioMode()).conmon_args(),
    ]
    read_fd, write_fd = os.pipe()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "_OCI_SYNCPIPE": str(write_fd),
    }
    try:
        with open(paths.conmon_log, "ab") as errlog:  # noqa: ASYNC230 - open is instant
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=errlog,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd=paths.bundle,  # conmon writes its `oom` marker in its working directory
            )
        os.close(write_fd)
        write_fd = -1
        rc = await proc.wait()  # the parent exits once the monitor has forked off
        if rc != 0:
            raise ContainerRuntimeError(
                f"conmon for {container_id} exited with {rc}: {_tail(paths.conmon_log)}"
            )
        try:
            raw = await asyncio.wait_for(asyncio.to_thread(_read_sync, read_fd), timeout)
        except TimeoutError as exc:
            raise ContainerRuntimeError(
                f"conmon for {container_id}: no answer in {timeout}s"
            ) from exc
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    if not raw:
        raise ContainerRuntimeError(
            f"conmon for {container_id} died before reporting: {_tail(paths.conmon_log)}"
        )
    answer = json.loads(raw.split(b"\n", 1)[0])
    pid = int(answer.get("data", -1))
    if pid <= 0:
        message = str(answer.get("message", "")).strip() or _tail(paths.conmon_log)
        raise ContainerRuntimeError(f"runc create {container_id} failed: {message}")
    conmon_pid = int(paths.conmon_pid_file.read_text().strip())
    log.debug("conmon.started", container_id=container_id, pid=pid, conmon_pid=conmon_pid)
    return pid, conmon_pid


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:].strip()
    except OSError:
        return ""


def conmon_alive(conmon_pid: int, container_id: str) -> bool:
    """Whether ``conmon_pid`` is still the conmon of ``container_id`` (not a reused pid)."""
    if conmon_pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{conmon_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"conmon") and container_id.encode() in cmdline


async def wait_pid_exit(pid: int, poll: float = 0.05) -> None:
    """Wait until process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd support: poll
        while await asyncio.to_thread(os.path.exists, f"/proc/{pid}"):  # noqa: ASYNC110
            await asyncio.sleep(poll)
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def _ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, _ready)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
