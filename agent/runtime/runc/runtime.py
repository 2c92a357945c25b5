"""``RuncRuntime``: containers under runc, monitored by conmon, on overlayfs rootfs.

``create`` mounts the rootfs and writes the OCI bundle; ``start`` has conmon (``--sync``:
our child, no double fork) run ``runc create`` (conmon keeps stdio, the log and the exit
code, and survives the agent), then releases the created init through runc's exec fifo
itself (``direct.start_created``: one runc execution per start, attaches that waited for
the start connected before the release). A watcher task per running container waits for
its conmon to exit (and reaps it), then records the exit (code from conmon's exit file,
OOM from conmon's ``oom`` file or the cgroup's ``oom_kill`` counter), deletes the runc
container and unmounts the rootfs.

A leaf: a ``bridge`` container's namespace and address come in the spec's ``endpoint``
(the container service's network step made them); the runtime only joins the namespace
and writes the address into the container's ``/etc/hosts``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog

from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExitInfo,
    InvalidConfig,
    LogRecord,
    NameConflict,
    NetworkEndpoint,
    NetworkInfo,
    Stats,
    StdioSession,
)
from dockyard.agent.runtime.runc import files
from dockyard.agent.runtime.runc.attach import LateAttach, connect_attach, write_resize
from dockyard.agent.runtime.runc.cgroups import CgroupV1
from dockyard.agent.runtime.runc.conmon import (
    StdioMode,
    conmon_alive,
    launch_conmon,
    reap_conmon,
    wait_pid_exit,
)
from dockyard.agent.runtime.runc.direct import (
    EXEC_FIFO,
    delete_stopped,
    parse_signal,
    signal_init,
    start_created,
)
from dockyard.agent.runtime.runc.exec import RuncExecSession, start_exec, write_exec_process
from dockyard.agent.runtime.runc.holds import RootfsHolds
from dockyard.agent.runtime.runc.interactive import PipeExec, PtyExec, start_interactive
from dockyard.agent.runtime.runc.lane import ThreadLane
from dockyard.agent.runtime.runc.logrotate import LogPolicy, rotate_until
from dockyard.agent.runtime.runc.logs import read_log
from dockyard.agent.runtime.runc.phases import Phases
from dockyard.agent.runtime.runc.records import (
    ContainerDir,
    ContainerRecord,
    encode_record,
    load_record,
    save_record,
    write_atomic,
)
from dockyard.agent.runtime.runc.rootfs import (
    ContainerLayer,
    mounted_under,
    private_mount_root,
    release_mount_root,
)
from dockyard.agent.runtime.runc.sealed_binary import SealedBinary, seal_binary
from dockyard.agent.runtime.runc.spec import (
    EtcFiles,
    build_spec,
    resolve_user,
)
from dockyard.common.remove_tree import remove_tree
from dockyard.common.taskscope import TaskScope, run_to_end
from dockyard.common.threads import to_thread_to_end

__all__ = ["RuncRuntime"]

log = structlog.get_logger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RuncRuntime:
    """The runc backend of :class:`~dockyard.agent.runtime.base.ContainerRuntime`."""

    def __init__(
        self,
        state_root: Path,
        runc_binary: str = "runc",
        conmon_binary: str = "conmon",
        cgroup_parent: str = "dockyard",
        log_policy: LogPolicy | None = None,
    ) -> None:
        """Keep state under ``state_root``; runc's own state under ``state_root/runc``.

        Args:
            state_root: Directory owned by this runtime (created if missing).
            runc_binary: runc name or path.
            conmon_binary: conmon name or path.
            cgroup_parent: cgroup (in every v1 hierarchy) that holds the containers'.
            log_policy: How much log each container keeps (size and count of files).
        """
        self.state_root = Path(state_root)
        self._runc_binary = shutil.which(runc_binary) or runc_binary
        self.runc = self._runc_binary  # a sealed copy of it once recovered
        self.conmon = shutil.which(conmon_binary) or conmon_binary
        self.runc_root = self.state_root / "runc"
        self.containers_root = self.state_root / "containers"
        self.cgroup_parent = cgroup_parent.strip("/")
        self.log_policy = log_policy or LogPolicy()
        self._records: dict[str, ContainerRecord] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # The exit watchers and the trash's removals: one task group, recover() to close().
        self._tasks = TaskScope("runc")
        self._locks: dict[str, asyncio.Lock] = {}
        self._holds = RootfsHolds()  # copies out of a container that hold its rootfs
        # Created here and never started since, with the create's mount in place: their
        # start has nothing to prepare (no runc state, no exit files, mounted).
        self._fresh: set[str] = set()
        self._cpu_prev: dict[str, tuple[float, int]] = {}
        self._pending_attach: dict[str, builtins.list[LateAttach]] = {}
        self._x32 = True  # the seccomp filter's x32 ABI: recover() asks the kernel
        self._user_dbs = files.UserDbs()
        # A start's blocking steps: not behind the creates queued in the default executor
        self._start_lane = ThreadLane("runc-start")
        self._sealed_runc: SealedBinary | None = None
        self._loaded = False

    # ----------------------------------------------------------------- helpers

    def _dir(self, container_id: str) -> ContainerDir:
        return ContainerDir(self.containers_root / container_id)

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def _event(self, container_id: str) -> asyncio.Event:
        return self._exited.setdefault(container_id, asyncio.Event())

    async def _ensure_loaded(self) -> None:
        if not self._loaded:
            await self.recover()

    def _find(self, ref: str) -> ContainerRecord:
        record = self._records.get(ref)
        if record is None:
            record = next((r for r in self._records.values() if r.config.name == ref), None)
        if record is None:
            raise ContainerNotFound(ref)
        return record

    async def _get(self, ref: str) -> ContainerRecord:
        await self._ensure_loaded()
        return self._find(ref)

    async def _runc(self, *args: str, check: bool = True) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.runc,
            "--root",
            str(self.runc_root),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        rc = proc.returncode or 0
        if check and rc != 0:
            raise ContainerRuntimeError(
                f"runc {' '.join(args)} failed ({rc}): {err.decode(errors='replace').strip()}"
            )
        return rc, out.decode(errors="replace")

    async def _runc_delete_leftover(self, container_id: str) -> None:
        """``runc kill KILL`` + ``runc delete`` if runc still has state for the container.

        (Not ``delete -f``, which waits ~100 ms; and no runc call when there is nothing.)
        """
        if await asyncio.to_thread((self.runc_root / container_id).exists):
            await self._runc("kill", container_id, "KILL", check=False)
            await self._runc("delete", container_id, check=False)

    async def _signal(self, record: ContainerRecord, sig: int | str, check: bool = False) -> None:
        """Signal the container's init directly (a pidfd), or through ``runc kill``."""
        signum = parse_signal(sig)
        if signum is not None and await asyncio.to_thread(
            signal_init, record.state.pid, record.cgroups_path, signum
        ):
            return
        await self._runc("kill", record.config.id, str(sig), check=check)

    async def _save(self, record: ContainerRecord) -> None:
        await save_record(self._dir(record.config.id), record)

    def _info(self, record: ContainerRecord) -> ContainerInfo:
        return record.info(self._dir(record.config.id).log, NetworkInfo(mode=record.config.network))

    async def _write_etc(self, cdir: ContainerDir, spec: ContainerSpec) -> None:
        """Rewrite a recorded container's /etc files (each replaced atomically)."""
        await asyncio.to_thread(_write_etc_blocking, cdir, spec, False)

    # ---------------------------------------------------------------- lifecycle

    async def create(
        self, config: ContainerSpec, record: Callable[[], None] | None = None
    ) -> ContainerInfo:
        """Mount the rootfs, write the bundle and record the container as created; the
        caller's ``record`` first, in the same thread hop."""
        await self._ensure_loaded()
        if not _ID_RE.match(config.id):
            raise InvalidConfig(f"invalid container id {config.id!r}")
        if not config.name:
            raise InvalidConfig(f"container {config.id}: empty name")
        if config.id in self._records:
            raise ContainerRuntimeError(f"container id {config.id} already exists")
        holder = next((r for r in self._records.values() if r.config.name == config.name), None)
        if holder is not None:
            raise NameConflict(config.name, holder.config.id)
        cdir = self._dir(config.id)
        ours = ContainerRecord(
            config=config,
            state=ContainerState(),
            cgroups_path=f"/{self.cgroup_parent}/{config.id}",
        )
        if config.network == "bridge" and config.endpoint is None:
            raise InvalidConfig(f"container {config.id}: a bridge container needs an endpoint")
        self._records[config.id] = ours  # reserve id and name while we await
        phases = Phases("create", config.id)
        try:
            layer = ContainerLayer(config.lower_dirs, cdir.base, config.ephemeral)
            await asyncio.to_thread(
                _create_blocking, cdir, layer, ours, self._user_dbs, self._x32, record
            )
            phases.mark("bundle")
        except BaseException:
            self._records.pop(config.id, None)
            await self._discard_dir(cdir, config.lower_dirs)
            raise
        self._event(config.id).clear()
        self._fresh.add(config.id)
        phases.done()
        log.info("container.created", container_id=config.id, name=config.name)
        return self._info(ours)

    async def _discard_dir(
        self,
        cdir: ContainerDir,
        lower_dirs: Sequence[Path],
        cgroup: CgroupV1 | None = None,
        unless: Path | None = None,
    ) -> bool:
        """Remove the container's ``cgroup`` (when given), unmount what is mounted in its
        directory and move that to the trash, in one thread hop run to its end (also when
        the caller is cancelled); the trash is emptied in the background. False, having
        done nothing, when the path ``unless`` exists (runc's state of the container)."""
        # Deleting a writable layer can take long: move it aside (one rename) and
        # delete it in the background; recover() finishes what a crash left there.
        trash = self.state_root / "trash" / f"{cdir.base.name}.{secrets.token_hex(4)}"
        moved = True  # a cancelled caller's thread still ran to its end
        try:  # the move happens (and the trash goes) also for a cancelled caller
            moved = await to_thread_to_end(
                lambda: _discard_blocking(cdir, lower_dirs, trash, cgroup, unless)
            )
            return moved
        finally:
            if moved:
                self._spawn_cleanup(trash)

    def _spawn_cleanup(self, path: Path) -> None:
        if not self._tasks.is_open:  # closed: the next recover() removes the trash
            return
        # any depth; close() cancels it, and waits for the thread's removal to end
        self._tasks.spawn(to_thread_to_end(lambda: remove_tree(path)), f"runc-trash-{path.name}")

    async def start(self, container_id: str) -> None:
        """Run the container (again, counting a restart, if it had exited)."""
        record = await self._get(container_id)
        cid = record.config.id
        phases = Phases("start", cid)
        async with self._lock(cid):
            if record.state.status is ContainerStatus.RUNNING:
                return
            phases.mark("lock")
            cdir = self._dir(cid)
            if record.state.status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
                record.state.restart_count += 1
            layer = ContainerLayer(record.config.lower_dirs, cdir.base, record.config.ephemeral)
            if cid in self._fresh:
                self._fresh.discard(cid)  # whatever happens next, it is no longer fresh
            elif await self._start_lane.run(_prepare_start, self.runc_root / cid, cdir, cid, layer):
                # runc still has the previous run's (or a crash's) container: delete it
                # first, then clear what its end may have written.
                await self._runc_delete_leftover(cid)
                await self._start_lane.run(_prepare_start, None, cdir, cid, layer)
            phases.mark("prepare")
            self._event(cid).clear()
            conmon_pid = 0
            try:
                config = record.config
                pid, conmon_pid = await launch_conmon(
                    conmon=self.conmon,
                    runc=self.runc,
                    runc_root=self.runc_root,
                    container_id=cid,
                    paths=cdir.conmon_paths(),
                    stdio=StdioMode(config.tty, config.open_stdin, config.stdin_once),
                    make_dirs=False,
                )
                record.conmon_pid = conmon_pid
                phases.mark("conmon_create")
                # Attaches that waited for this start see its first output: connected
                # while the init still waits to be released.
                await self._connect_pending(cid)
                released = await start_created(self.runc_root / cid, pid, remove_fifo=False)
                if not released:
                    await self._runc("start", cid)
                phases.mark("release")
            except ContainerRuntimeError as exc:
                await self._runc("kill", cid, "KILL", check=False)
                if conmon_pid:  # created, not released: conmon exits with the init
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wait_pid_exit(conmon_pid), 10)
                    reap_conmon(conmon_pid)
                await self._runc("delete", cid, check=False)
                record.state = ContainerState(
                    status=ContainerStatus.DEAD,
                    exit_code=-1,
                    error=str(exc),
                    finished_at=datetime.now(UTC),
                    restart_count=record.state.restart_count,
                )
                await self._save(record)
                self._event(cid).set()
                raise
            record.state = ContainerState(
                status=ContainerStatus.RUNNING,
                pid=pid,
                started_at=datetime.now(UTC),
                restart_count=record.state.restart_count,
            )
            if released:
                fifo = self.runc_root / cid / EXEC_FIFO
                await self._start_lane.run(_released, fifo, cdir, encode_record(record))
            else:
                await self._save(record)
            self._watch(record, started=True)
            phases.mark("save")
        phases.done()
        log.info("container.started", container_id=cid, pid=pid)

    async def _connect_pending(self, cid: str) -> None:
        """Connect the attaches that waited for this start (the process has not run)."""
        pending = self._pending_attach.pop(cid, [])
        tty = self._records[cid].config.tty
        for late in pending:
            try:
                session = await connect_attach(self._dir(cid).bundle, tty)
                if not late.connect(session):  # closed meanwhile: nobody reads it
                    await session.close()
            except ContainerRuntimeError as exc:
                log.warning("container.attach_failed", container_id=cid, error=str(exc))

    def _watch(self, record: ContainerRecord, started: bool = False) -> None:
        """Watch the container's conmon until it exits; ``started``: this agent just
        started it (its log's first size check waits one interval)."""
        cid = record.config.id

        async def watcher() -> None:
            cdir = self._dir(cid)
            await rotate_until(
                wait_pid_exit(record.conmon_pid),
                cdir.log,
                cdir.bundle / "ctl",
                container_log_policy(self.log_policy, record.config),
                check_now=not started,
            )
            reap_conmon(record.conmon_pid)  # our child unless an earlier agent started it
            await self._finalize(record)

        task = self._tasks.spawn(watcher(), f"runc-watch-{cid}")
        self._watchers[cid] = task
        task.add_done_callback(
            lambda t: self._watchers.pop(cid, None) if self._watchers.get(cid) is t else None
        )

    async def _finalize(self, record: ContainerRecord) -> None:
        """Record how the container exited; delete the runc container; unmount."""
        cid = record.config.id
        cdir = self._dir(cid)
        phases = Phases("finalize", cid)
        async with self._holds.lock(cid):  # a copy holding the rootfs keeps it mounted
            unmount = not self._holds.held(cid)
            # The common case (an exit code, an empty cgroup) in one thread hop, the
            # record saved in it too (unless the container is being removed).
            code, finished, oom, state = await asyncio.to_thread(
                self._exit_cleanup, record, cid in self._records, unmount
            )
            phases.mark("cleanup")
            if state is None:
                await self._runc("delete", cid, check=False)
                if code is None:
                    _, out = await self._runc("state", cid, check=False)
                    if '"running"' in out:  # conmon is gone but the process is not: kill it
                        await self._runc("kill", cid, "KILL", check=False)
                        await self._runc("delete", cid, check=False)
                if unmount:
                    with contextlib.suppress(ContainerRuntimeError):
                        await ContainerLayer(record.config.lower_dirs, cdir.base).unmount()
                phases.mark("runc_delete")
                record.state = _exited_state(record.state, code, finished, oom)
                if cid in self._records:
                    await self._save(record)
            else:
                record.state = state
        self._cpu_prev.pop(cid, None)
        phases.mark("save")
        phases.done()
        self._event(cid).set()
        log.info("container.exited", container_id=cid, exit_code=code, oom_killed=oom)

    def _exit_cleanup(
        self, record: ContainerRecord, save: bool, unmount: bool = True
    ) -> tuple[int | None, datetime | None, bool, ContainerState | None]:
        """conmon's exit code, when, and whether OOM-killed; then, with a code, the cgroups
        and runc's state removed, the rootfs unmounted (with ``unmount``: not while a
        copy holds it) and (``save``) the record saved with the state after the exit,
        which is returned (blocking).

        The last value is None when that was not done (no exit code, or processes left
        in a cgroup): runc's own ``delete`` finishes then.
        """
        cid = record.config.id
        cdir = self._dir(cid)
        code, finished, oom_file = files.read_exit(cdir, cid)
        cgroup = CgroupV1(record.cgroups_path)
        oom = oom_file or cgroup.oom_killed()
        if code is None or not delete_stopped(self.runc_root / cid, cgroup):
            return code, finished, oom, None
        if unmount:
            with contextlib.suppress(ContainerRuntimeError):
                ContainerLayer(record.config.lower_dirs, cdir.base).unmount_blocking()
        state = _exited_state(record.state, code, finished, oom)
        if save:
            write_atomic(cdir.record, encode_record(dataclasses.replace(record, state=state)))
        return code, finished, oom, state

    @staticmethod
    def _exit_info(state: ContainerState) -> ExitInfo:
        return ExitInfo(
            exit_code=state.exit_code if state.exit_code is not None else -1,
            oom_killed=state.oom_killed,
            finished_at=state.finished_at,
            error=state.error,
        )

    async def wait(self, container_id: str) -> ExitInfo:
        """Wait until the container has exited (a created one: until it ran and exited)."""
        record = await self._get(container_id)
        if record.state.status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
            return self._exit_info(record.state)
        await self._event(record.config.id).wait()
        return self._exit_info(record.state)

    async def stop(
        self,
        container_id: str,
        timeout: float = 10.0,
    ) -> ExitInfo | None:
        """``runc kill TERM``, then ``KILL`` after ``timeout`` seconds."""
        record = await self._get(container_id)
        cid = record.config.id
        if record.state.status is not ContainerStatus.RUNNING:
            return None
        event = self._event(cid)
        await self._signal(record, record.config.stop_signal or "TERM")
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            log.info("container.kill_after_grace", container_id=cid, timeout=timeout)
            await self._signal(record, "KILL")
            await event.wait()
        return self._exit_info(record.state)

    async def kill(self, container_id: str, signal: int | str = "KILL") -> None:
        """Send ``signal`` (``9``, ``KILL`` or ``SIGKILL``) to the container's init."""
        record = await self._get(container_id)
        if record.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(record.config.id, record.state.status.value)
        await self._signal(record, signal, check=True)

    async def remove(self, container_id: str, force: bool = False) -> None:
        """Delete the container, its writable layer and its state directory."""
        record = await self._get(container_id)
        cid = record.config.id
        phases = Phases("remove", cid)
        async with self._lock(cid):
            if record.state.status is ContainerStatus.RUNNING:
                if not force:
                    raise ContainerRuntimeError(
                        f"container {cid} is running: stop it first or remove with force"
                    )
                await self._signal(record, "KILL")
                await self._event(cid).wait()
            phases.mark("kill")
            self._records.pop(cid, None)
            self._fresh.discard(cid)
            for late in self._pending_attach.pop(cid, []):
                late.fail(ContainerNotFound(cid))
            watcher = self._watchers.pop(cid, None)
            if watcher is not None:
                watcher.cancel()
            # Gone from the records: what is left to delete is deleted whole, also for a
            # caller cancelled meanwhile (a `docker rm` client that hung up).
            await run_to_end(self._tear_down(record, phases))
        phases.done()
        self._locks.pop(cid, None)
        self._holds.forget(cid)
        self._exited.pop(cid, None)
        log.info("container.removed", container_id=cid)

    async def _tear_down(self, record: ContainerRecord, phases: Phases) -> None:
        """A removed container's runc state, cgroups, mounts and directory deleted."""
        cid = record.config.id
        cdir, lower_dirs = self._dir(cid), record.config.lower_dirs
        cgroup = CgroupV1(record.cgroups_path)
        # The common case (runc deleted the exited container) in one thread hop
        if not await self._discard_dir(cdir, lower_dirs, cgroup, unless=self.runc_root / cid):
            await self._runc_delete_leftover(cid)
            phases.mark("leftover")
            await self._discard_dir(cdir, lower_dirs, cgroup)
        phases.mark("discard")

    @contextlib.asynccontextmanager
    async def rootfs(self, container_id: str) -> AsyncIterator[Path]:
        """The container's root filesystem, mounted while the caller holds it (``docker
        cp``): a stopped container's is mounted for its first holder and unmounted after
        its last, unless it runs by then; an exit leaves it mounted while it is held
        (`RootfsHolds`). The release happens also for a caller cancelled meanwhile."""
        record = await self._get(container_id)
        cid = record.config.id
        layer = ContainerLayer(
            record.config.lower_dirs, self._dir(cid).base, record.config.ephemeral
        )
        async with self._lock(cid):  # not halfway through a start or a removal
            if self._records.get(cid) is not record:
                raise ContainerNotFound(container_id)
            self._fresh.discard(cid)  # the last holder's release unmounts it
            await self._holds.take(cid, layer)
        try:
            yield layer.target
        finally:
            await run_to_end(self._release_rootfs(record, layer))

    async def _release_rootfs(self, record: ContainerRecord, layer: ContainerLayer) -> None:
        cid = record.config.id

        def running() -> bool:  # its exit unmounts it (asked under the mount lock)
            return (
                self._records.get(cid) is record and record.state.status is ContainerStatus.RUNNING
            )

        async with self._lock(cid):  # not halfway through a start
            await self._holds.release(cid, layer, running)

    # ------------------------------------------------------------------ queries

    async def list(self, all: bool = False) -> builtins.list[ContainerInfo]:
        """Running containers, or every one with ``all``."""
        await self._ensure_loaded()
        return [
            self._info(r)
            for r in self._records.values()
            if all or r.state.status is ContainerStatus.RUNNING
        ]

    async def inspect(self, container_id: str) -> ContainerInfo:
        """One container by id or name."""
        record = await self._get(container_id)
        return self._info(record)

    async def logs(
        self,
        container_id: str,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """Lines of the k8s-file log conmon writes; ``follow`` until the container exits."""
        record = await self._get(container_id)
        cid = record.config.id

        async def finished() -> bool:
            return record.state.status is not ContainerStatus.RUNNING or cid not in self._records

        async for line in read_log(
            self._dir(cid).log,
            follow=follow,
            tail=tail,
            since=since,
            timestamps=timestamps,
            finished=finished,
            exited=self._event(cid) if follow else None,
        ):
            yield line

    async def _exec_file(
        self,
        container_id: str,
        cmd: Sequence[str],
        env: Sequence[str],
        workdir: str | None,
        user: str | None,
        tty: bool,
    ) -> tuple[str, Path]:
        """Write the ``runc exec --process`` file: the container's env/caps, overridden."""
        record = await self._get(container_id)
        cid = record.config.id
        if record.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(cid, record.state.status.value)
        if not cmd:
            raise InvalidConfig("exec needs a command")
        process_file = await write_exec_process(self._dir(cid), cmd, env, workdir, user, tty)
        return cid, process_file

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> RuncExecSession:
        """``runc exec`` a process with the container's env/caps, overridden as given."""
        if tty:
            raise ContainerRuntimeError("exec with a tty needs exec_interactive")
        cid, process_file = await self._exec_file(container_id, cmd, env, workdir, user, False)
        return await start_exec(self.runc, self.runc_root, cid, process_file)

    async def attach(self, container_id: str) -> StdioSession:
        """conmon's attach socket now, or when the container starts."""
        record = await self._get(container_id)
        cid = record.config.id
        async with self._lock(cid):  # not halfway through a start
            if record.state.status is ContainerStatus.RUNNING:
                return await connect_attach(self._dir(cid).bundle, record.config.tty)
            pending = self._pending_attach.setdefault(cid, [])

            def forget(late: LateAttach) -> None:
                with contextlib.suppress(ValueError):
                    self._pending_attach.get(cid, []).remove(late)

            late = LateAttach(record.config.tty, forget)
            pending.append(late)
            return late

    async def resize(self, container_id: str, height: int, width: int) -> None:
        """Resize the container's terminal through conmon."""
        record = await self._get(container_id)
        if record.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(record.config.id, record.state.status.value)
        if record.config.tty:
            await asyncio.to_thread(
                write_resize, self._dir(record.config.id).bundle / "ctl", height, width
            )

    async def exec_interactive(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> PtyExec | PipeExec:
        """``runc exec`` with stdin open and, with ``tty``, a terminal we hold."""
        cid, process_file = await self._exec_file(container_id, cmd, env, workdir, user, tty)
        try:
            return await start_interactive(self.runc, self.runc_root, cid, process_file, tty)
        except BaseException:
            await asyncio.to_thread(process_file.unlink, missing_ok=True)
            raise

    async def stats(self, container_id: str) -> Stats:
        """cgroup v1 counters; CPU percent over the time since the previous call."""
        record = await self._get(container_id)
        cid = record.config.id
        if record.state.status is not ContainerStatus.RUNNING:
            raise ContainerNotRunning(cid, record.state.status.value)
        cgroup = CgroupV1(record.cgroups_path)
        loop = asyncio.get_running_loop()
        if cid not in self._cpu_prev:
            first = await asyncio.to_thread(cgroup.counters)
            self._cpu_prev[cid] = (loop.time(), first.cpu_usage_ns)
            await asyncio.sleep(0.1)
        now = loop.time()
        counters = await asyncio.to_thread(cgroup.counters)
        prev_t, prev_cpu = self._cpu_prev[cid]
        self._cpu_prev[cid] = (now, counters.cpu_usage_ns)
        elapsed_ns = max(1.0, (now - prev_t) * 1e9)
        percent = max(0.0, (counters.cpu_usage_ns - prev_cpu) / elapsed_ns * 100.0)
        return Stats(
            read_at=datetime.now(UTC),
            cpu_usage_ns=counters.cpu_usage_ns,
            cpu_percent=percent,
            memory_usage=counters.memory_usage,
            memory_limit=counters.memory_limit,
            pids=counters.pids,
        )

    # ----------------------------------------------------------------- recovery

    async def recover(self) -> builtins.list[ContainerInfo]:
        """Load every container record; reattach to running ones, settle exited ones.

        A running container whose conmon is alive gets a watcher again; one whose conmon
        wrote an exit file meanwhile is recorded as exited with that code; one whose
        conmon vanished without an exit file is killed and marked dead. Mounts are left
        as they are (a running container's rootfs is still mounted).
        """
        self._loaded = True
        await self._tasks.open()
        await self._private_mount_root()
        trash = self.state_root / "trash"
        if await asyncio.to_thread(trash.is_dir):
            self._spawn_cleanup(trash)  # layers a crash left half deleted
        await asyncio.to_thread(self.containers_root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self.runc_root.mkdir, parents=True, exist_ok=True)
        # The `run --detach` shim of earlier agents (starts release runc's exec fifo now).
        await asyncio.to_thread((self.state_root / "runc-run-detached").unlink, missing_ok=True)
        self._x32 = await asyncio.to_thread(files.kernel_runs_x32)
        await self._seal_runc()
        entries = await asyncio.to_thread(lambda: sorted(self.containers_root.iterdir()))
        for base in entries:
            cid = base.name
            if cid in self._records:
                continue
            cdir = ContainerDir(base)
            record = await asyncio.to_thread(load_record, cdir)
            if record is None:  # a create that died halfway: nothing to keep
                log.warning("container.incomplete_discarded", path=str(base))
                await self._discard_dir(cdir, [])
                continue
            self._records[cid] = record
            status = record.state.status
            if status is ContainerStatus.RUNNING:
                if conmon_alive(record.conmon_pid, cid):
                    self._event(cid).clear()
                    self._watch(record)
                else:
                    await self._finalize(record)
            elif status is ContainerStatus.CREATED:
                self._event(cid).clear()
                if conmon_alive(record.conmon_pid, cid):  # died between create and start
                    await self._runc("kill", cid, "KILL", check=False)
                    await wait_pid_exit(record.conmon_pid)
                    await self._runc("delete", cid, check=False)
            else:
                self._event(cid).set()
        log.info("runtime.recovered", containers=len(self._records))
        return [self._info(r) for r in self._records.values()]

    async def rename(self, container_id: str, name: str) -> None:
        """Record the new name (the record is the only place that holds it)."""
        record = await self._get(container_id)
        holder = next((r for r in self._records.values() if r.config.name == name), None)
        if holder is not None and holder is not record:
            raise NameConflict(name, holder.config.id)
        record.config = dataclasses.replace(record.config, name=name)
        await self._save(record)

    async def set_endpoint(self, container_id: str, endpoint: NetworkEndpoint) -> None:
        """Record the container's new endpoint and rewrite its ``/etc/hosts``."""
        record = await self._get(container_id)
        record.config = dataclasses.replace(record.config, endpoint=endpoint)
        await self._save(record)
        await self._write_etc(self._dir(record.config.id), record.config)

    async def _private_mount_root(self) -> None:
        """The state root as a private mount of its own (the rootfs mounts, runc's state and
        the trash inside it, so renames stay within one mount): no container's overlay
        propagates to the host's other mount namespaces."""
        try:
            done = await asyncio.to_thread(private_mount_root, self.state_root)
        except ContainerRuntimeError as exc:  # e.g. no CAP_SYS_ADMIN: work as before
            log.warning("runtime.mount_root_failed", path=str(self.state_root), error=str(exc))
            return
        event = "runtime.mount_root_busy" if done == "busy" else "runtime.mount_root"
        (log.warning if done == "busy" else log.debug)(event, path=str(self.state_root), done=done)

    async def _seal_runc(self) -> None:
        """Run runc from a sealed copy from now on (``sealed_binary``: no copy of runc's
        binary per container start)."""
        if self._sealed_runc is None:
            sealed = await asyncio.to_thread(seal_binary, self.runc, self.state_root / "bin")
            if sealed is not None:
                self._sealed_runc, self.runc = sealed, sealed.path
                log.debug("runc.sealed_copy", binary=self._runc_binary, path=sealed.path)

    async def close(self) -> None:
        """Stop watching (containers keep running under conmon); the state root's own
        mount is undone when no container's rootfs is mounted below it."""
        await self._tasks.close()  # the watchers cancelled; the trash's removals finished
        self._watchers.clear()
        self._start_lane.close()
        if self._sealed_runc is not None:
            self._sealed_runc.close()
            self._sealed_runc, self.runc = None, self._runc_binary
        if self._loaded:
            await asyncio.to_thread(release_mount_root, self.state_root)


def container_log_policy(default: LogPolicy, config: ContainerSpec) -> LogPolicy:
    """The runtime's policy with the container's own max-size/max-file over it."""
    if not config.log_max_size and not config.log_max_files:
        return default
    return dataclasses.replace(
        default,
        max_size=max(4096, config.log_max_size or default.max_size),
        max_files=config.log_max_files or default.max_files,
    )


def _etc_files(cdir: ContainerDir, fresh: bool = True) -> EtcFiles:
    """The container's hosts, resolv.conf and hostname: in its bundle (no directory of
    their own to make), or in ``etc/`` for a container an earlier agent created (its
    config.json binds them from there), which only a recorded one (not ``fresh``) can be.
    """
    where = cdir.etc if not fresh and cdir.etc.is_dir() else cdir.bundle
    return EtcFiles(where / "hosts", where / "resolv.conf", where / "hostname")


def _write_etc_blocking(cdir: ContainerDir, spec: ContainerSpec, fresh: bool) -> None:
    endpoint = spec.endpoint
    files.write_etc_files(
        _etc_files(cdir, fresh),
        spec.hostname or spec.id[:12],
        spec.network,
        endpoint.ip_address if endpoint else "",
        spec.name,
        endpoint.nameserver if endpoint else "",
        files.EtcExtras(spec.extra_hosts, spec.dns_servers, spec.dns_search),
        fresh=fresh,
    )


def _create_blocking(
    cdir: ContainerDir,
    layer: ContainerLayer,
    record: ContainerRecord,
    user_dbs: files.UserDbs,
    x32: bool,
    caller_record: Callable[[], None] | None = None,
) -> None:
    """A new container, whole, in one thread hop (blocking): the caller's record of it
    first, its directories, the rootfs mounted, the /etc files, config.json, then the
    record that makes it exist. The image's passwd and group come from ``user_dbs``
    (read in this rootfs the first time).

    Fails when the directory exists (an id in use). conmon's stderr file is made here
    too (the start opens it on the loop). Each directory made once, without
    ``parents`` probing: the containers' directory exists (``recover``). config.json in
    place (:func:`files.write_new`): no record exists yet, so a crash before the
    record's rename leaves a directory that recovery discards whole.
    """
    config = record.config
    if caller_record is not None:
        caller_record()
    try:
        os.mkdir(cdir.base)
    except FileNotFoundError:  # the containers' directory removed under us
        cdir.base.mkdir(parents=True)
    os.mkdir(cdir.bundle)
    rootfs = layer.mount_blocking(fresh=True)
    passwd, group = user_dbs.read(config.lower_dirs, rootfs)
    _write_etc_blocking(cdir, config, fresh=True)
    user = resolve_user(config.user or config.image_config.get("User"), passwd, group)
    devices = files.host_devices() if config.privileged else []
    netns = config.endpoint.netns_path if config.endpoint else None
    spec = build_spec(
        config, rootfs, user, _etc_files(cdir), record.cgroups_path, devices, netns, x32
    )
    files.write_new(cdir.spec, json.dumps(spec).encode())
    # conmon's stderr file, made here: the start opens it on the event loop to hand it to
    # conmon, and a new inode there is the loop's time (~0.1 ms on a busy ext4)
    files.write_new(cdir.conmon_log, b"")
    write_atomic(cdir.record, encode_record(record))


def _prepare_start(
    leftover: Path | None, cdir: ContainerDir, cid: str, layer: ContainerLayer
) -> bool:
    """Before a start, in one thread hop (blocking): True, doing nothing, when runc's state
    ``leftover`` exists; else the previous run's exit files cleared and the rootfs
    mounted (a create's mount is found as it is). conmon writes in the bundle: no
    directory to make (``ContainerDir.conmon_paths``)."""
    if leftover is not None and os.path.lexists(leftover):
        return True
    files.clear_exit_files(cdir, cid)
    layer.mount_blocking()
    return False


def _released(fifo: Path, cdir: ContainerDir, record: bytes) -> None:
    """After the init's release, in one thread hop (blocking): runc's exec fifo removed
    (runc then reports the container running), then the record saved."""
    fifo.unlink(missing_ok=True)
    write_atomic(cdir.record, record)


def _exited_state(
    state: ContainerState, code: int | None, finished: datetime | None, oom: bool
) -> ContainerState:
    """The state after an exit with conmon's ``code`` (None: it wrote none, DEAD)."""
    if code is None:
        status, error = (
            ContainerStatus.DEAD,
            "container monitor (conmon) exited without an exit code",
        )
    else:
        status, error = ContainerStatus.EXITED, state.error
    return dataclasses.replace(
        state,
        status=status,
        exit_code=-1 if code is None else code,
        error=error,
        oom_killed=oom,
        pid=0,
        finished_at=finished or datetime.now(UTC),
    )


def _discard_blocking(
    cdir: ContainerDir,
    lower_dirs: Sequence[Path],
    trash: Path,
    cgroup: CgroupV1 | None,
    unless: Path | None = None,
) -> bool:
    """The cgroup removed (when given), the rootfs and any mount left below the
    container's directory unmounted, then the directory moved to ``trash`` (blocking).
    False, having done nothing, when the path ``unless`` exists."""
    if unless is not None and os.path.lexists(unless):
        return False
    if cgroup is not None:
        cgroup.remove()
    if lower_dirs:
        with contextlib.suppress(ContainerRuntimeError, InvalidConfig):
            ContainerLayer(lower_dirs, cdir.base).unmount_blocking()
    for mount in mounted_under(cdir.base):
        with contextlib.suppress(ContainerRuntimeError):
            ContainerLayer([mount], mount.parent).unmount_blocking()
    _move_aside(cdir.base, trash)
    return True


def _move_aside(source: Path, destination: Path) -> None:
    """Rename `source` to `destination` (same filesystem: instant); nothing if it is gone
    (a create refused before it made the directory)."""
    if not os.path.lexists(source):
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)
