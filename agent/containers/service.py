"""`ContainerService`: the node's containers; the only caller of the runtime.

Typed against the `ContainerRuntime` protocol, so runc, docker and hollow are driven the
same way. `create` takes a parsed `ContainerRequest` (from the gRPC servicer or the task
executor, both thin adapters), resolves the image through the backend's `ImageProvider`,
finds named volumes, attaches the network through the backend's `NetworkAttacher` and
hands the runtime a complete `ContainerSpec`. Refs resolve by id, unique id prefix or
name; restart policies and `--rm` are applied by one supervisor task per started
container; images that containers use cannot be removed without force (each container
holds a lease on its image's layers, so even a forced removal keeps what it runs on).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from dockyard.agent.containers.admission import resolve_binds
from dockyard.agent.containers.backends import ImageProvider, NetworkAttacher, ResolvedImage
from dockyard.agent.containers.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageMissing,
    InvalidArgument,
    NotFound,
)
from dockyard.agent.containers.meta import ContainerMeta, MetaStore
from dockyard.agent.containers.names import NAME_RE, generate_name
from dockyard.agent.containers.request import (
    ContainerRequest,
    check_user,
    parse_image_ref,
    parse_signal,
)
from dockyard.agent.containers.supervisor import Supervisor
from dockyard.agent.containers.volumes import VolumeStore
from dockyard.agent.events import EventBus
from dockyard.agent.images.errors import ImageNotFound
from dockyard.agent.images.reference import Reference
from dockyard.agent.network.errors import NetworkError, PortInUse
from dockyard.agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntime,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerStatus,
    ExecSession,
    ExitInfo,
    InteractiveExec,
    InvalidConfig,
    LogRecord,
    NameConflict,
    NetworkEndpoint,
    PortMapping,
    RestartPolicyName,
    Stats,
    StdioSession,
    VolumeMount,
    process_args,
)
from dockyard.common.lookup import match_reference
from dockyard.common.taskscope import TaskScope

if TYPE_CHECKING:
    from dockyard.agent.network.overlays import OverlayManager

__all__ = ["ContainerService", "ContainerView"]

log = structlog.get_logger(__name__)

_RECENT_EXITS = 256
_MAX_REF = 128
"""Longest container reference: a name has at most 128 characters, an ID 64."""


@dataclass(frozen=True, slots=True)
class ContainerView:
    """A container as the API shows it: the runtime's info and the service's record."""

    info: ContainerInfo
    meta: ContainerMeta


class ContainerService:
    """Containers on this node.

    Args:
        runtime: The backend's runtime (runc: its state under `<state dir>/runtime`).
        images: Where images come from (runc: the node's image store).
        meta_root: Where the service keeps its per-container records (None: in memory).
        volumes: Named volumes (default: `<meta_root>/../volumes`; none without a
            meta_root: the backend keeps named volumes itself, as the Docker engine does).
        network: The network step for `bridge` containers (None: they are refused).
        events: Where the service tells what it did (create, start, die, destroy, ...).
    """

    def __init__(
        self,
        runtime: ContainerRuntime,
        images: ImageProvider,
        meta_root: Path | None,
        volumes: VolumeStore | None = None,
        network: NetworkAttacher | None = None,
        overlays: OverlayManager | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.runtime = runtime
        self.events = events or EventBus()
        self.images = images
        self.network = network
        self.overlays = overlays
        state_dir = meta_root.parent if meta_root is not None else None
        if volumes is None and state_dir is not None:
            volumes = VolumeStore(state_dir / "volumes")
        self.volumes = volumes
        self._metas = MetaStore(meta_root)
        self._meta: dict[str, ContainerMeta] = {}
        self._supervisor = Supervisor(
            runtime, self._meta.get, self._auto_remove, on_exit=self._on_exit
        )
        self.calls = TaskScope("run-calls")
        """`Containers.Run` lifecycles: they outlive a client that went away."""
        self._removed: OrderedDict[str, tuple[str, ExitInfo]] = OrderedDict()
        self._creating: set[str] = set()
        self._own_dirs = (str(state_dir.absolute()),) if state_dir else ()  # the agent's

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover containers after an agent (re)start and resume supervising them.

        Running ones get a supervisor again; exited ones whose policy is `always`, or
        `unless-stopped` and not stopped by the user, are started again (as dockerd
        does); exited `--rm` ones are removed, as are those of a `Containers.Run` call
        that the previous agent process took with it (the running ones once they exit).
        """
        await self.calls.open()
        infos = await self.runtime.recover()
        self._meta.update(await asyncio.to_thread(self._metas.load_all))  # the supervisor reads it
        known = {info.id for info in infos}
        for stale in set(self._meta) - known:
            self._meta.pop(stale)
            await asyncio.to_thread(self._metas.delete, stale)
        await self._recover_network(infos)
        for info in infos:
            meta = self._meta.get(info.id)
            if meta is None:  # created by something else in this runtime root
                meta = ContainerMeta(info.id, "")
                self._meta[info.id] = meta
            # its Run call died with the previous agent process: nobody else removes it
            meta.auto_remove = meta.auto_remove or meta.removed_by_call
            self._hold_image(meta, info.config)
            await self._resume(info, meta)
        log.info("containers.recovered", containers=len(infos))

    async def _recover_network(self, infos: builtins.list[ContainerInfo]) -> None:
        """Release the attachments of removed containers, hold the ports of the others
        again; tell the runtime of an endpoint a reboot changed; hand the overlay
        manager back the containers on overlay networks."""
        if self.network is None:
            return
        bridged = {i.id: i.config for i in infos if i.config.network == "bridge"}
        keep = {cid: s.ports for cid, s in bridged.items()}
        local = {cid: s.local_network for cid, s in bridged.items() if s.local_network}
        changed = await (self.network.recover(keep, local) if local else self.network.recover(keep))
        for cid, endpoint in changed.items():
            if bridged[cid].endpoint != endpoint:
                with contextlib.suppress(ContainerRuntimeError, OSError):
                    await self.runtime.set_endpoint(cid, endpoint)
        if self.overlays is None:
            return
        for cid, spec in bridged.items():  # their overlay networks, from their own spec
            current = changed.get(cid) or spec.endpoint
            if spec.overlays and current is not None:
                self.overlays.adopt(cid, current.netns_path, current.ip_address, spec.overlays)

    async def _resume(self, info: ContainerInfo, meta: ContainerMeta) -> None:
        status = info.state.status
        if status is ContainerStatus.RUNNING:
            await self._supervisor.watch(info.id)
        elif status in (ContainerStatus.EXITED, ContainerStatus.DEAD):
            policy = info.config.restart_policy.name
            if meta.auto_remove:
                await self._auto_remove(info.id)
            elif policy is RestartPolicyName.ALWAYS or (
                policy is RestartPolicyName.UNLESS_STOPPED and not meta.manually_stopped
            ):
                log.info("container.restarting_after_agent_restart", container_id=info.id)
                with contextlib.suppress(ContainerRuntimeError):
                    await self.runtime.start(info.id)
                await self._supervisor.watch(info.id)

    async def close(self) -> None:
        """Stop supervising; the containers keep running (live restore). A `Containers.Run`
        call's lifecycle is cancelled and its removal awaited (or left to the next start)."""
        await self.calls.close()
        await self._supervisor.close()
        await self.runtime.close()
        if self.network is not None:
            await self.network.close()

    # --------------------------------------------------------------------- lookup

    async def _resolve(self, ref: str) -> ContainerInfo:
        ref = ref.removeprefix("/")
        if not ref:
            raise InvalidArgument("container", "a container ID or name is required")
        if len(ref) > _MAX_REF:
            raise InvalidArgument(
                "container", f"{len(ref)} characters long: an ID or a name has at most {_MAX_REF}"
            )
        try:
            return self._networked(await self.runtime.inspect(ref))  # a whole ID or a name
        except ContainerNotFound:
            pass
        infos = await self._list(all=True)
        matches = match_reference(ref, infos, lambda i: i.id, lambda i: i.name)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(
                "container", f"{ref!r} matches {len(matches)} containers: give more of the ID"
            )
        raise NotFound(f"no such container: {ref}")

    def _networked(self, info: ContainerInfo) -> ContainerInfo:
        """The runtime's info with where the network step put a `bridge` container."""
        if info.config.network != "bridge" or self.network is None:
            return info
        return replace(info, network=self.network.info(info.id))

    async def _list(self, all: bool) -> builtins.list[ContainerInfo]:
        return [self._networked(info) for info in await self.runtime.list(all=all)]

    def _publish(self, action: str, info: ContainerInfo, **extra: str) -> None:
        """Tell subscribers what happened to a container (Docker's event attributes)."""
        attributes = {**info.config.labels, "image": info.image, "name": info.name, **extra}
        self.events.publish("container", action, info.id, attributes)

    def _on_exit(self, info: ContainerInfo, exit_info: ExitInfo) -> None:
        self._publish("die", info, exitCode=str(exit_info.exit_code))
        if exit_info.oom_killed:
            self._publish("oom", info)

    def _view(self, info: ContainerInfo) -> ContainerView:
        return ContainerView(info, self._meta.get(info.id) or ContainerMeta(info.id, ""))

    async def by_name(self, name: str) -> ContainerView | None:
        """The container called exactly `name` (None when there is none); no ID prefixes."""
        info = await self._named(name)
        return None if info is None else self._view(self._networked(info))

    async def inspect(self, ref: str) -> ContainerView:
        """One container by ID, unique ID prefix or name."""
        return self._view(await self._resolve(ref))

    async def list(self, all: bool = False) -> builtins.list[ContainerView]:
        """Running containers (every container with `all`), newest first."""
        infos = await self._list(all=all)
        infos.sort(key=lambda i: i.created_at, reverse=True)
        return [self._view(info) for info in infos]

    # -------------------------------------------------------------------- volumes

    def _volume_dir(self, name: str, made: builtins.list[str]) -> Path:
        """A named volume's directory, the volume made first when missing (docker's way);
        `made` collects the names made here."""
        assert self.volumes is not None
        volume, created = self.volumes.ensure(name)
        if created:
            made.append(name)
            self.events.publish("volume", "create", name, {"driver": "local"})
        return volume.mountpoint

    async def _drop_volumes(self, names: builtins.list[str]) -> None:
        """Remove volumes a failed create made (nothing else can use them yet)."""
        for name in names:
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.volume_store().remove, name)

    async def volume_users(self, name: str) -> builtins.list[str]:
        """The ids of the containers that mount the volume."""
        volume = await asyncio.to_thread(self.volume_store().get, name)
        return [
            view.info.id
            for view in await self.list(all=True)
            if any(v.host == volume.mountpoint for v in view.info.config.volumes)
        ]

    async def remove_volume(self, name: str, force: bool = False) -> None:
        """Delete a volume nothing uses; with `force`, a missing one is no error."""
        try:
            users = await self.volume_users(name)
        except NotFound:
            if force:
                return
            raise
        if users:
            raise FailedPrecondition(
                f"volume {name} is in use by container {', '.join(u[:12] for u in users)}"
            )
        await asyncio.to_thread(self.volume_store().remove, name)
        self.events.publish("volume", "destroy", name, {"driver": "local"})

    def volume_store(self) -> VolumeStore:
        """The named volumes this service keeps (FAILED_PRECONDITION: the backend's own)."""
        if self.volumes is None:
            raise FailedPrecondition("this agent's backend keeps named volumes itself")
        return self.volumes

    # --------------------------------------------------------------------- create

    async def _image(self, ref: Reference, text: str) -> ResolvedImage:
        try:
            return await self.images.resolve(ref)
        except ImageNotFound:
            try:
                return await self.images.resolve(text)  # an image id
            except ImageNotFound:
                raise ImageMissing(f"image {ref} not found on this node: pull it first") from None

    def _hold_image(self, meta: ContainerMeta, spec: ContainerSpec) -> None:
        """Lease the image's layers so gc keeps them while the container exists."""
        self.images.hold(
            meta.lease, ResolvedImage(meta.image_digest, lower_dirs=tuple(spec.lower_dirs))
        )

    async def _named(self, name: str) -> ContainerInfo | None:
        """The container called exactly `name`, without listing every container."""
        try:
            info = await self.runtime.inspect(name)
        except ContainerNotFound:
            return None
        if info.name == name:
            return info
        # `name` is another container's ID: look among the names the slow way
        return next((i for i in await self.runtime.list(all=True) if i.name == name), None)

    async def _take_name(self, wanted: str) -> str:
        """The container's name: `wanted`, or a generated one; reserved until released."""
        if wanted:  # one lookup, not a list of every container (100 replicas: 100 lists)
            named = await self._named(wanted)
            if named is not None or wanted in self._creating:
                raise AlreadyExists(
                    f"container name {wanted!r} is already in use by container "
                    f"{named.id[:12] if named else 'being created'}"
                )
            self._creating.add(wanted)
            return wanted
        infos = await self.runtime.list(all=True)
        taken = {info.name for info in infos} | self._creating
        name = wanted or generate_name(taken)
        if name in taken:
            holder = next((i.id for i in infos if i.name == name), "")
            raise AlreadyExists(
                f"container name {name!r} is already in use by container "
                f"{holder[:12] or 'being created'}"
            )
        self._creating.add(name)
        return name

    async def _resolved_mounts(
        self, spec: ContainerSpec, made: builtins.list[str]
    ) -> Sequence[VolumeMount]:
        """`_mounts` in a thread; a spec without mounts has nothing to resolve, and does
        not pay a thread's round trip (a hollow fleet creates thousands a second)."""
        if not spec.volumes:
            return ()
        return await asyncio.to_thread(self._mounts, spec, made)

    def _mounts(self, spec: ContainerSpec, made: builtins.list[str]) -> builtins.list[VolumeMount]:
        """The spec's mounts with named volumes' directories (blocking: run in a thread)."""
        volumes = [
            replace(v, host=self._volume_dir(v.volume, made))
            if v.volume and self.volumes is not None
            else v
            for v in spec.volumes
        ]
        return resolve_binds(volumes, self._own_dirs)

    async def create(
        self,
        request: ContainerRequest,
        prepare: Callable[[ContainerSpec], Awaitable[ContainerSpec]] | None = None,
    ) -> ContainerView:
        """Create a container from a local image (nothing runs yet). ``prepare`` may
        change the spec once its ID and name are chosen (the Docker API attaches it to
        a cluster network then)."""
        image = await self._image(request.image, request.spec.image)
        if request.spec.network == "bridge":
            await self._check_bridge(request.spec.ports)
        name = await self._take_name(request.spec.name)
        made: builtins.list[str] = []  # volumes this create made: gone again if it fails
        try:
            spec = request.spec.replaced(
                id=secrets.token_hex(32),
                name=name,
                image=image.runtime_ref or request.spec.image,
                lower_dirs=image.lower_dirs,
                image_config=image.config or {},
                volumes=await self._resolved_mounts(request.spec, made),
                ephemeral=request.spec.ephemeral or request.auto_remove or request.removed_by_call,
            )
            if image.config is not None:  # else only the backend knows the image's command
                _check_command(spec)
            if prepare is not None:
                spec = await prepare(spec)
            meta = ContainerMeta(
                spec.id, image.digest, request.auto_remove, request.removed_by_call
            )
            info = await self._create(spec, meta)
            made.clear()  # created: its volumes stay
        except NameConflict as exc:
            raise AlreadyExists(str(exc)) from exc
        except PortInUse as exc:  # taken since _check_bridge looked
            raise await self._port_in_use(exc) from exc
        except InvalidConfig as exc:  # past check_spec, only the image's files can refuse
            raise InvalidArgument("user" if request.spec.user else "image", str(exc)) from exc
        finally:
            self._creating.discard(name)
            await self._drop_volumes(made)
        self._publish("create", info)
        return ContainerView(info, meta)

    def _meta_writer(self, meta: ContainerMeta) -> Callable[[], None] | None:
        """The blocking save of a new container's record, which the runtime makes in its
        create's thread hop, before the container exists; None for an in-memory store
        (no root: the hollow and docker backends), which writes nothing."""
        if self._metas.root is None:
            return None
        return functools.partial(self._metas.save, meta)

    async def _create(self, spec: ContainerSpec, meta: ContainerMeta) -> ContainerInfo:
        """Attach the network, have the runtime record and create it; all undone on
        failure."""
        self._hold_image(meta, spec)
        attached = False
        try:
            self._meta[spec.id] = meta
            if spec.network == "bridge":
                assert self.network is not None  # _check_bridge refused it otherwise
                attached = True
                if spec.local_network is None:  # ports first
                    endpoint = await self.network.attach(spec.id, spec.ports)
                else:
                    endpoint = await self.network.attach(spec.id, spec.ports, spec.local_network)
                spec = replace(spec, endpoint=endpoint)
                if spec.overlays:
                    await self._join_overlays(spec.id, endpoint, spec.overlays)
            info = await self.runtime.create(spec, self._meta_writer(meta))
            if info.id != spec.id:  # the backend names its containers itself (docker)
                await self._rekey(meta, info.id)
            return self._networked(info)
        except BaseException:
            meta.lease.close()
            self._meta.pop(spec.id, None)
            await asyncio.to_thread(self._metas.delete, spec.id)
            if attached and self.network is not None:
                await asyncio.shield(self.network.detach(spec.id))
            raise

    async def _join_overlays(
        self, container_id: str, endpoint: NetworkEndpoint, overlays: Sequence[tuple[str, str]]
    ) -> None:
        if self.overlays is None:  # a backend with its own networking (hollow, docker)
            log.info("container.overlays_skipped", container_id=container_id)
            return
        try:
            await self.overlays.attach(
                container_id, endpoint.netns_path, endpoint.ip_address, overlays
            )
        except (RuntimeError, OSError) as exc:
            raise FailedPrecondition(f"cannot join the overlay networks: {exc}") from exc

    async def _rekey(self, meta: ContainerMeta, container_id: str) -> None:
        old = meta.id
        meta.id = container_id
        self._meta[container_id] = self._meta.pop(old)
        await asyncio.to_thread(self._metas.save, meta)
        await asyncio.to_thread(self._metas.delete, old)

    async def _check_bridge(self, ports: Sequence[PortMapping]) -> None:
        """The agent has a bridge and every host port can be published now."""
        network = self.network
        if network is None:
            raise FailedPrecondition("this agent has no bridge network")
        try:
            network.check_ports(ports)
        except PortInUse as exc:
            raise await self._port_in_use(exc) from exc
        except NetworkError as exc:
            raise FailedPrecondition(str(exc)) from exc

    async def _port_in_use(self, exc: PortInUse) -> FailedPrecondition:
        """The error naming the port and the container that holds it, by name."""
        holder = ""
        if exc.holder_id:
            with contextlib.suppress(ContainerNotFound):
                info = await self.runtime.inspect(exc.holder_id)
                holder = f"{info.name} ({exc.holder_id[:12]})"
        return FailedPrecondition(str(PortInUse(exc.index, exc.mapping, exc.holder_id, holder)))

    # ------------------------------------------------------------- start and stop

    async def start_container(self, ref: str) -> ContainerView:
        """Start a created or exited container; resets its restart policy's count."""
        info = await self._resolve(ref)
        meta = self._meta.get(info.id)
        await self._supervisor.forget(info.id)
        if meta is not None and meta.manually_stopped:
            meta.manually_stopped = False
            await asyncio.to_thread(self._metas.save, meta)
        try:
            await self.runtime.start(info.id)
        finally:
            await self._supervisor.watch(info.id)  # applies --rm and the restart policy on exit
        self._publish("start", info)
        return await self.inspect(info.id)

    async def _mark_stopped(self, container_id: str) -> None:
        meta = self._meta.get(container_id)
        if meta is not None and not meta.manually_stopped:
            meta.manually_stopped = True
            await asyncio.to_thread(self._metas.save, meta)

    async def stop(self, ref: str, timeout: float | None = None) -> ContainerView:
        """SIGTERM, then SIGKILL after `timeout` (10 s); no restart policy restarts it."""
        if timeout is not None and not math.isfinite(timeout):  # NaN: waits forever
            raise InvalidArgument("timeout_seconds", f"must be a number of seconds, got {timeout}")
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout_seconds", f"must not be negative, got {timeout}")
        info = await self._resolve(ref)
        await self._mark_stopped(info.id)
        await self.runtime.stop(info.id, 10.0 if timeout is None else timeout)
        self._publish("stop", info)
        return await self._inspect_after(info)

    async def kill(self, ref: str, signal: str) -> ContainerView:
        """Send a signal to the container's init; no restart policy restarts it."""
        number = parse_signal(signal)
        info = await self._resolve(ref)
        if info.state.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.name} ({info.id[:12]}) is not running")
        await self._mark_stopped(info.id)
        await self.runtime.kill(info.id, str(number))
        self._publish("kill", info, signal=str(number))
        return await self._inspect_after(info)

    async def rename(self, ref: str, name: str) -> ContainerView:
        """Give a container another name (``docker rename``)."""
        name = name.removeprefix("/")
        if not NAME_RE.match(name):
            raise InvalidArgument(
                "name",
                f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            )
        info = await self._resolve(ref)
        if name == info.name:
            return self._view(info)
        if name in self._creating:
            raise AlreadyExists(
                f"container name {name!r} is already in use by container being created"
            )
        try:
            await self.runtime.rename(info.id, name)
        except NameConflict as exc:
            raise AlreadyExists(str(exc)) from exc
        return await self.inspect(info.id)

    async def _inspect_after(self, info: ContainerInfo) -> ContainerView:
        try:
            return await self.inspect(info.id)
        except NotFound:  # --rm removed it meanwhile
            return ContainerView(info, self._view(info).meta)

    async def wait(self, ref: str) -> ExitInfo:
        """Wait until the container exits (also when `--rm` removes it right away)."""
        try:
            info = await self._resolve(ref)
        except NotFound:
            removed = self._recently_removed(ref)
            if removed is None:
                raise
            return removed
        try:
            return await self.runtime.wait(info.id)
        except ContainerNotFound:
            removed = self._recently_removed(info.id)
            if removed is None:
                raise NotFound(f"no such container: {ref}") from None
            return removed

    def _recently_removed(self, ref: str) -> ExitInfo | None:
        ref = ref.removeprefix("/")
        for cid, (name, exit_info) in reversed(self._removed.items()):
            if ref and (cid.startswith(ref) or name == ref):
                return exit_info
        return None

    async def remove(self, ref: str, force: bool = False) -> str:
        """Delete a container; a running one needs `force` (it is killed first)."""
        info = await self._resolve(ref)
        if info.state.status is ContainerStatus.RUNNING and not force:
            raise FailedPrecondition(
                f"container {info.name} ({info.id[:12]}) is running: stop it first or "
                "remove it with force"
            )
        if info.state.status is ContainerStatus.RUNNING:  # else its record goes next
            await self._mark_stopped(info.id)
        await self._remove(info.id, force)
        self._publish("destroy", info)
        return info.id

    async def _remove(self, container_id: str, force: bool) -> None:
        await self._supervisor.forget(container_id)
        await self.runtime.remove(container_id, force=force)
        if self.network is not None:  # its address, rules, ports and namespace
            await asyncio.shield(self.network.detach(container_id))
        if self.overlays is not None:  # its overlay interfaces went with the namespace
            self.overlays.forget(container_id)
        meta = self._meta.pop(container_id, None)
        if meta is not None:
            meta.lease.close()
        await asyncio.to_thread(self._metas.delete, container_id)

    async def _auto_remove(self, container_id: str) -> None:
        info = await self.runtime.inspect(container_id)
        exit_info = ExitInfo(
            exit_code=info.state.exit_code if info.state.exit_code is not None else -1,
            oom_killed=info.state.oom_killed,
            finished_at=info.state.finished_at,
            error=info.state.error,
        )
        self._removed[container_id] = (info.name, exit_info)
        while len(self._removed) > _RECENT_EXITS:
            self._removed.popitem(last=False)
        await self._remove(container_id, force=True)
        self._publish("destroy", info)
        log.info("container.auto_removed", container_id=container_id)

    # -------------------------------------------------------------- observability

    async def logs(
        self,
        ref: str,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
    ) -> AsyncIterator[LogRecord]:
        """The container's output lines."""
        if tail is not None and tail < 0:
            raise InvalidArgument("tail", f"must not be negative, got {tail}")
        info = await self._resolve(ref)
        async for line in self.runtime.logs(
            info.id, follow=follow, tail=tail, since=since, timestamps=timestamps
        ):
            yield line

    async def exec(
        self,
        ref: str,
        command: Sequence[str],
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecSession:
        """Start a process in a running container."""
        info = await self._check_exec(ref, command, env, workdir, user)
        try:
            return await self.runtime.exec(info.id, command, env=env, workdir=workdir, user=user)
        except InvalidConfig as exc:  # the rest is checked above: the container has no such user
            raise InvalidArgument("user", str(exc)) from exc

    async def _check_exec(
        self,
        ref: str,
        command: Sequence[str],
        env: Sequence[str],
        workdir: str | None,
        user: str | None,
    ) -> ContainerInfo:
        if not command:
            raise InvalidArgument("command", "a command is required")
        for index, entry in enumerate(env):
            if "=" not in entry or not entry.partition("=")[0]:
                raise InvalidArgument(f"env[{index}]", f"expected KEY=VALUE, got {entry!r}")
        if workdir and not workdir.startswith("/"):
            raise InvalidArgument("workdir", f"must be an absolute path, got {workdir!r}")
        check_user("user", user or "")
        info = await self._resolve(ref)
        if info.state.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.name} ({info.id[:12]}) is not running")
        return info

    async def attach(self, ref: str) -> tuple[ContainerInfo, StdioSession]:
        """Connect to a container's stdio (one not started yet: when it starts)."""
        info = await self._resolve(ref)
        return info, await self.runtime.attach(info.id)

    async def resize(self, ref: str, height: int, width: int) -> ContainerView:
        """Resize a running container's terminal."""
        info = await self._resolve(ref)
        if info.state.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.name} ({info.id[:12]}) is not running")
        await self.runtime.resize(info.id, height, width)
        return self._view(info)

    async def exec_interactive(
        self,
        ref: str,
        command: Sequence[str],
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> InteractiveExec:
        """Start a process with its stdin open (and a terminal with ``tty``)."""
        info = await self._check_exec(ref, command, env, workdir, user)
        try:
            return await self.runtime.exec_interactive(
                info.id, command, env=env, workdir=workdir, user=user, tty=tty
            )
        except InvalidConfig as exc:
            raise InvalidArgument("user", str(exc)) from exc

    async def stats(self, ref: str) -> Stats:
        """One resource usage sample of a running container."""
        info = await self._resolve(ref)
        if info.state.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.name} ({info.id[:12]}) is not running")
        return await self.runtime.stats(info.id)

    # --------------------------------------------------------------------- images

    async def users_of(self, image: ResolvedImage) -> builtins.list[ContainerView]:
        """Containers created from `image`."""
        return [
            self._view(info)
            for info in await self.runtime.list(all=True)
            if (meta := self._meta.get(info.id)) is not None and meta.image_digest == image.digest
        ]

    async def remove_image(self, text: str, force: bool = False) -> builtins.list[str]:
        """`docker rmi`: untag, delete when untagged; refused while containers use it."""
        if not text:
            raise InvalidArgument("image", "an image reference or ID is required")
        try:
            image = await self.images.resolve(text)
        except ImageNotFound:
            raise NotFound(f"image {text} not found on this node") from None
        except ValueError:
            parse_image_ref("image", text)
            raise
        untag_only = False
        with contextlib.suppress(InvalidArgument):
            ref = parse_image_ref("image", text)
            untag_only = (
                str(ref) in image.references
                and len([r for r in image.references if "@" not in r]) > 1
            )
        users = await self.users_of(image)
        if users and not force and not untag_only:
            user = users[0].info
            raise FailedPrecondition(
                f"image {text} is used by container {user.id[:12]} ({user.name}): remove the "
                "container first or use force"
            )
        return await self.images.remove(text, force=force)


def _check_command(spec: ContainerSpec) -> None:
    """A container needs something to run: the request's or the image's command."""
    try:
        process_args(spec)
    except InvalidConfig:
        raise InvalidArgument(
            "command", f"no command given and image {spec.image!r} has none"
        ) from None
