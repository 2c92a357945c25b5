"""Launch conmon, the per-container monitor Podman and CRI-O use.

conmon runs ``runc create``, holds the container's stdio and writes it to a k8s-file log,
writes the exit code to ``--exit-dir/<id>`` and ``--persist-dir/exit`` (and ``oom`` there
on a cgroup v1 OOM event), and outlives the agent. It tells us the container's pid (or
runc's error) as one JSON line on the fd named by ``_OCI_SYNCPIPE``, as
``libpod/oci_conmon_linux.go`` reads it; that line is read on the event loop.

conmon runs with ``--sync``: it stays the agent's child instead of double-forking away
(one fork, one pid file and one wait fewer per start). It still outlives the agent (its
own session; a killed agent's children are adopted by init), and the runtime's watcher
reaps it with :func:`reap_conmon` when it exits; after an agent restart the new agent
is not its parent and watches it by pidfd as before.
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

__all__ = [
    "ConmonPaths",
    "StdioMode",
    "conmon_alive",
    "launch_conmon",
    "make_conmon_dirs",
    "reap_conmon",
    "wait_pid_exit",
]

log = structlog.get_logger(__name__)

# conmons started with --sync are our children until they exit: their Popen objects are
# kept here (not dropped, which would warn that they still run) until reap_conmon.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class ConmonPaths:
    """Where conmon reads and writes for one container."""

    bundle: Path
    log: Path
    exit_dir: Path | None
    """``--exit-dir`` (conmon writes the exit code to ``<it>/<id>``); None: not given."""
    persist_dir: Path
    pid_file: Path
    conmon_pid_file: Path
    socket_dir: Path | None
    """``--socket-dir-path`` (a symlink to the bundle per container); None: the attach
    socket is named in the bundle itself (``--full-attach``)."""
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


async def _read_answer(fd: int) -> bytes:
    """conmon's answer on the (non-blocking) sync pipe ``fd``: up to its first newline, or
    whatever came before the pipe closed. Read on the loop: no thread hop."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or b"\n" in buf) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return bytes(buf)


def _conmon_args(
    conmon: str,
    runc: str,
    runc_root: Path,
    container_id: str,
    paths: ConmonPaths,
    stdio: StdioMode,
    daemonize: bool,
) -> list[str]:
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
        # No --log-size-max: conmon 2.1 truncates the live file every that many bytes
        # written, also after the agent rotated it (see logrotate), and lines are lost.
        "-l",
        f"k8s-file:{paths.log}",
        *(["--exit-dir", str(paths.exit_dir)] if paths.exit_dir is not None else []),
        "-0",
        str(paths.persist_dir),
        *(
            ["--socket-dir-path", str(paths.socket_dir)]
            if paths.socket_dir is not None
            else ["--full-attach"]
        ),
        "--runtime-arg",
        "--root",
        "--runtime-arg",
        str(runc_root),
        "--log-level",
        "error",
        "--no-sync-log",
        *stdio.conmon_args(),
    ]
    # conmon writes its -P pid file only when it double-forks.
    return [*args, "-P", str(paths.conmon_pid_file)] if daemonize else [*args, "--sync"]


async def launch_conmon(
    *,
    conmon: str,
    runc: str,
    runc_root: Path,
    container_id: str,
    paths: ConmonPaths,
    stdio: StdioMode | None = None,
    timeout: float = 30.0,
    daemonize: bool = False,
    make_dirs: bool = True,
) -> tuple[int, int]:
    """Start conmon for ``container_id`` and wait until runc has created the container.

    ``stdio`` asks for a terminal (conmon's console socket receives the pty's master
    from runc) and an open stdin fed from conmon's ``attach`` socket. ``daemonize``
    lets conmon double-fork away from us as it does without ``--sync`` (the start path
    before; kept for ``tests/bench/bench_start_paths.py`` to compare). ``make_dirs``
    False: the caller made conmon's directories (``make_conmon_dirs``) off the loop.

    Returns:
        ``(container_pid, conmon_pid)``.

    Raises:
        ContainerRuntimeError: conmon or runc failed; the message has runc's.
    """
    if make_dirs:
        make_conmon_dirs(paths)
    args = _conmon_args(
        conmon, runc, runc_root, container_id, paths, stdio or StdioMode(), daemonize
    )
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        try:
            proc = _spawn(args, write_fd, paths.bundle, paths.conmon_log)
        finally:
            os.close(write_fd)  # conmon has it: EOF when it dies
        try:
            raw = await asyncio.wait_for(_read_answer(read_fd), timeout)
        except TimeoutError as exc:
            proc.kill()
            await _reap_after_exit(proc.pid)
            raise ContainerRuntimeError(
                f"conmon for {container_id}: no answer in {timeout}s"
            ) from exc
    finally:
        os.close(read_fd)
    if daemonize:
        await _reap_after_exit(proc.pid)  # the parent exits once the monitor forked off
        if proc.returncode != 0:
            raise ContainerRuntimeError(
                f"conmon for {container_id} exited with {proc.returncode}: "
                f"{_tail(paths.conmon_log)}"
            )
    pid, message = _parse_answer(raw)
    if pid <= 0:
        if not daemonize:
            await _reap_after_exit(proc.pid)  # conmon exits after the failure it reported
        if not raw:
            raise ContainerRuntimeError(
                f"conmon for {container_id} died before reporting: {_tail(paths.conmon_log)}"
            )
        message = message or _tail(paths.conmon_log)
        raise ContainerRuntimeError(f"runc create {container_id} failed: {message}")
    conmon_pid = int(paths.conmon_pid_file.read_text().strip()) if daemonize else proc.pid
    log.debug("conmon.started", container_id=container_id, pid=pid, conmon_pid=conmon_pid)
    return pid, conmon_pid


def make_conmon_dirs(paths: ConmonPaths) -> None:
    """The directories conmon writes in, other than the bundle (blocking)."""
    for d in (paths.exit_dir, paths.persist_dir, paths.socket_dir):
        if d is not None and d != paths.bundle:
            d.mkdir(parents=True, exist_ok=True)


def _spawn(args: list[str], sync_fd: int, cwd: Path, errlog_path: Path) -> subprocess.Popen[bytes]:
    """Start conmon with ``sync_fd`` as its ``_OCI_SYNCPIPE``, in its own session.

    What ``asyncio.create_subprocess_exec`` does on the loop too (a vfork and an exec),
    without a child-watcher thread per conmon: :func:`reap_conmon` collects its exit.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "_OCI_SYNCPIPE": str(sync_fd),
    }
    with open(errlog_path, "ab") as errlog:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=errlog,
            stderr=errlog,
            env=env,
            pass_fds=(sync_fd,),
            start_new_session=True,
            cwd=cwd,  # conmon writes its `oom` marker in its working directory
        )
    _children[proc.pid] = proc
    return proc


def _parse_answer(raw: bytes) -> tuple[int, str]:
    """The pid in conmon's first line (-1 for none) and its error message."""
    if not raw:
        return -1, ""
    answer = json.loads(raw.split(b"\n", 1)[0])
    return int(answer.get("data", -1)), str(answer.get("message", "")).strip()


async def _reap_after_exit(conmon_pid: int) -> None:
    await wait_pid_exit(conmon_pid)
    reap_conmon(conmon_pid)


def reap_conmon(conmon_pid: int) -> None:
    """Collect the exit of a conmon this process started, once it has exited (no-op for
    one it did not start, such as one an earlier agent started, or one still running)."""
    proc = _children.get(conmon_pid)
    if proc is not None and proc.poll() is not None:
        del _children[conmon_pid]


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
