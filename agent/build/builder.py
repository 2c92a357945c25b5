"""`Builder`: a Dockerfile's steps over an unpacked build context, as dockerd's legacy
builder runs them.

Each step starts from the image the previous one stored (an untagged image of the
store, deleted when the build ends unless it is the result): FROM picks the base (the
store's image, pulled when missing, or ``scratch``); RUN runs the command in a container
of the node's container service (the agent's privilege policy, default seccomp and
capabilities, never privileged) and commits its writable layer; COPY and ADD mount the
image's layers under an overlay in the build's scratch directory and copy the context
files in (``copy_step.py``); the other instructions change the config. Every container
and mount a step makes is removed when it ends, also when it fails or the client goes
away (the handler is cancelled). Output goes to ``emit`` as dockerd's JSON messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.build.cache import BuildCache, chain, sources_digest
from dockyard.agent.build.commit import upper_dir
from dockyard.agent.build.config_steps import (
    CONFIG_INSTRUCTIONS,
    DEFAULT_SHELL,
    ConfigState,
    apply_config,
    env_map,
)
from dockyard.agent.build.context import ContextError, Source, find_sources, read_dockerfile
from dockyard.agent.build.copy_step import CopyPlan, copy_into, is_dir_in, resolve_owner
from dockyard.agent.build.dockerfile import DockerfileError, Instruction, expand, parse
from dockyard.agent.build.image import ImageDraft
from dockyard.agent.build.in_root import resolve_in_root
from dockyard.agent.build.upper import layer_from_upper
from dockyard.agent.containers.admission import Admission
from dockyard.agent.containers.errors import ApiError
from dockyard.agent.containers.request import parse_create
from dockyard.agent.containers.service import ContainerService
from dockyard.agent.images.errors import ImageError, ImageNotFound
from dockyard.agent.images.image_store import Lease
from dockyard.agent.images.models import Image, Layer
from dockyard.agent.images.reference import Reference, parse_reference
from dockyard.agent.images.safe_fs import UnsafePath
from dockyard.agent.images.service import ImageService
from dockyard.agent.runtime.base import ContainerRuntimeError
from dockyard.agent.runtime.runc.rootfs import ContainerLayer, mounted_under
from dockyard.v1 import containers_pb2 as pb

__all__ = [
    "BuildFailed",
    "BuildOptions",
    "Builder",
    "Emit",
    "recover",
    "remove_scratch",
    "scratch_dir",
]

log = structlog.get_logger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
LOG_DRAIN_SECONDS = 5.0
BUILD_LABEL = "dockyard.build"


class BuildFailed(Exception):
    """The build stopped; the message is the client's ``errorDetail``."""


@dataclass(frozen=True)
class BuildOptions:
    """``POST /build``'s query, parsed."""

    dockerfile: str = "Dockerfile"
    tags: Sequence[Reference] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    quiet: bool = False
    target: str = ""
    no_cache: bool = False
    network: str = "bridge"
    pull: bool = False


@dataclass
class _Stage:
    name: str
    index: int
    draft: ImageDraft
    image: Image | None
    key: str
    state: ConfigState = field(default_factory=ConfigState)

    def step_key(self, step: Instruction, *extra: str) -> str:
        """The cache key of ``step`` in this stage."""
        args = json.dumps(sorted(self.state.args.items()))
        return chain(self.key, step.original, args, *extra)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "git@", "git://"))


class Builder:
    """Runs one build (one instance per request).

    Args:
        images: The node's image service (bases, results, intermediate images).
        containers: The node's container service (RUN steps).
        admission: The agent's privilege policy (RUN containers go through it).
        scratch: A private directory for this build (mounts, tars); the caller removes it.
        emit: Sends one JSON message to the client.
        cache: Earlier steps' results (None: no cache).
    """

    def __init__(
        self,
        images: ImageService,
        containers: ContainerService,
        admission: Admission,
        scratch: Path,
        emit: Emit,
        cache: BuildCache | None = None,
    ) -> None:
        self.images = images
        self.store = images.store
        self.containers = containers
        self.admission = admission
        self.scratch = scratch
        self.emit = emit
        self.cache = cache
        self.made: list[str] = []  # manifest digests of images this build stored
        self.stages: dict[str, Image] = {}
        self.global_args: dict[str, str] = {}
        self.options = BuildOptions()
        self.counter = 0
        self.lease = Lease()
        self.stage_count = 0

    async def say(self, text: str) -> None:
        """One ``stream`` line (unless quiet)."""
        if not self.options.quiet:
            await self.emit({"stream": text})

    async def build(self, context: Path, options: BuildOptions) -> Image:
        """Build the Dockerfile of ``context``; returns the tagged result.

        Raises:
            BuildFailed: naming the instruction and its line.
        """
        self.options = options
        try:
            text = await asyncio.to_thread(read_dockerfile, context, options.dockerfile)
            steps = parse(text)
        except DockerfileError as exc:
            raise BuildFailed(str(exc)) from None
        if not any(s.cmd == "FROM" for s in steps):
            raise BuildFailed("the Dockerfile has no FROM instruction")
        names = {s.values[2].lower() for s in steps if s.cmd == "FROM" and len(s.values) == 3}
        self.options = replace(options, target=options.target.lower())
        if options.target and options.target.lower() not in names:
            raise BuildFailed(f"failed to reach build target {options.target} in Dockerfile")
        image: Image | None = None
        if self.cache is not None:
            await asyncio.to_thread(self.cache.load)
        try:
            with self.store.lease() as self.lease:  # gc keeps the layers made and reused
                image = await self._run(context, steps)
            for ref in options.tags:
                await self.store.tag(image, ref)
        finally:
            keep = image.digest if image is not None else None
            await asyncio.shield(self._drop_intermediates(keep))
            if self.cache is not None:
                await asyncio.shield(asyncio.to_thread(self.cache.save))
        return image

    async def _run(self, context: Path, steps: list[Instruction]) -> Image:
        stage: _Stage | None = None
        for number, step in enumerate(steps, 1):
            if step.cmd == "FROM" and stage is not None and stage.name == self.options.target:
                break
            await self.say(f"Step {number}/{len(steps)} : {step.original}\n")
            try:
                if step.cmd == "FROM":
                    if stage is not None:
                        finished = await self._checkpoint(stage)
                        self.stages[str(stage.index)] = finished
                        if stage.name:
                            self.stages[stage.name] = finished
                    stage = await self._from(step)
                elif stage is None:
                    self._global_arg(step)
                    continue
                else:
                    await self._step(stage, step, context)
                image_id = stage.image.id if stage.image is not None else stage.draft.image_id()
            except (ValueError, ImageError, ApiError, ContainerRuntimeError, OSError) as exc:
                raise BuildFailed(f"{step.cmd} (line {step.line}): {exc}") from None
            await self.say(f" ---> {image_id[7:19]}\n")
        assert stage is not None
        if self.options.labels:
            labels = dict(stage.draft.runtime.get("Labels") or {})
            labels.update(self.options.labels)
            stage.draft.runtime["Labels"] = labels
            stage.draft.touch()
            stage.image = None
        return await self._checkpoint(stage)

    def _global_arg(self, step: Instruction) -> None:
        if step.cmd != "ARG":
            raise BuildFailed(f"line {step.line}: {step.cmd} before the first FROM")
        self._arg(step, self.global_args, self.global_args)

    def _arg(self, step: Instruction, scope: dict[str, str], env: Mapping[str, str]) -> None:
        for word in step.values:
            name, has_default, default = word.partition("=")
            if name in self.options.build_args:
                scope[name] = self.options.build_args[name]
            elif has_default:
                scope[name] = expand(default, env)
            elif name in self.global_args:
                scope[name] = self.global_args[name]

    async def _from(self, step: Instruction) -> _Stage:
        words = [expand(v, self.global_args) for v in step.values]
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
            raise DockerfileError("FROM takes an image and an optional AS name")
        name = words[2].lower() if len(words) == 3 else ""
        index = self.stage_count
        self.stage_count += 1
        if words[0].lower() == "scratch":
            draft = ImageDraft.scratch(self.images.registry.platform)
            return _Stage(name, index, draft, None, chain("scratch"))
        base = await self._image(words[0], self.options.pull)
        self._hold(base.layers)
        draft = await ImageDraft.from_image(self.store, base)
        return _Stage(name, index, draft, base, chain(base.id))

    async def _image(self, text: str, pull: bool = False) -> Image:
        if text.lower() in self.stages:
            return self.stages[text.lower()]
        if not pull:
            with contextlib.suppress(ImageNotFound):
                return self.store.resolve(text)
        ref = parse_reference(text)
        await self.say(f"Pulling {ref.familiar()}\n")
        return await self.images.pull(ref)

    async def _checkpoint(self, stage: _Stage) -> Image:
        if stage.image is None:
            existing = {i.digest for i in self.store.images()}
            stage.image = await stage.draft.store(self.store)
            if stage.image.digest not in existing:
                self.made.append(stage.image.digest)
        return stage.image

    def _env(self, stage: _Stage) -> dict[str, str]:
        return {**stage.state.args, **env_map(stage.draft.runtime)}

    async def _step(self, stage: _Stage, step: Instruction, context: Path) -> None:
        if step.heredocs:
            raise DockerfileError("heredocs (<<EOF) are not supported by dockyard's builder")
        env = self._env(stage)
        if step.cmd == "ARG":
            self._arg(step, stage.state.args, env)
            stage.draft.add_history(f"ARG {' '.join(step.values)}", True)
            stage.draft.touch()
            stage.key = stage.step_key(step)
        elif step.cmd in CONFIG_INSTRUCTIONS:
            apply_config(step, stage.draft.runtime, stage.state, env)
            if step.cmd == "MAINTAINER":
                stage.draft.config["author"] = " ".join(step.values)
            stage.draft.add_history(f"/bin/sh -c #(nop) {step.original}", True)
            stage.draft.touch()
            stage.key = stage.step_key(step)
        elif step.cmd == "RUN":
            await self._run_step(stage, step)
        elif step.cmd in ("COPY", "ADD"):
            await self._copy_step(stage, step, context)
        else:
            raise DockerfileError(f"{step.cmd} is not supported by dockyard's builder")
        stage.image = None

    # ----- RUN -------------------------------------------------------------------

    async def _cached(self, stage: _Stage, key: str) -> bool:
        """Take the step's result from the cache when it is there."""
        if self.cache is None or self.options.no_cache:
            return False
        found = self.cache.get(key, self.store.blobs)
        if found is None:
            return False
        stage.draft, stage.key = found, key
        self._hold(found.layers)
        await self.say(" ---> Using cache\n")
        return True

    def _hold(self, layers: Sequence[Layer]) -> None:
        """Keep ``layers`` through a concurrent gc until the build ends (they are in no
        image record until a later step stores one)."""
        for layer in layers:
            self.lease.add(layer.digest, layer.diff_id)

    def _remember(self, stage: _Stage, key: str) -> None:
        stage.draft.touch()
        stage.key = key
        if self.cache is not None:
            self.cache.put(key, stage.draft)

    async def _run_step(self, stage: _Stage, step: Instruction) -> None:
        if step.flags:
            raise DockerfileError(f"RUN {step.flags[0]} is not supported (BuildKit only)")
        key = stage.step_key(step)
        if await self._cached(stage, key):
            return
        image = await self._checkpoint(stage)
        runtime = stage.draft.runtime
        shell = runtime.get("Shell") or DEFAULT_SHELL
        command = list(step.values) if step.json else [*shell, " ".join(step.values)]
        env = env_map(runtime)
        build_env = [f"{k}={v}" for k, v in stage.state.args.items() if k not in env]
        request = pb.CreateContainerRequest(
            image=image.id.removeprefix("sha256:"),
            command=command,
            clear_entrypoint=True,
            env=build_env,
            workdir=runtime.get("WorkingDir") or "",
            user=runtime.get("User") or "",
            network=self._network(),
            labels={BUILD_LABEL: "run"},
        )
        checked = parse_create(request)
        self.admission.check(request)
        async with self._container(checked) as container_id:
            await self.say(f" ---> Running in {container_id[:12]}\n")
            code = await self._run_container(container_id)
            if code != 0:
                raise BuildFailed(
                    f"The command '{' '.join(command)}' returned a non-zero code: {code}"
                )
            view = await self.containers.inspect(container_id)
            layer = await asyncio.to_thread(
                layer_from_upper, self.store.blobs, upper_dir(view.info)
            )
            self._hold([layer])
        stage.draft.add_layer(layer)
        stage.draft.add_history(" ".join(command), False)
        self._remember(stage, key)

    def _network(self) -> str:
        """RUN's network: the build's ``networkmode`` (``bridge`` only when the node has one)."""
        wanted = self.options.network
        if wanted == "bridge" and self.containers.network is None:
            return "none"
        return wanted

    @contextlib.asynccontextmanager
    async def _container(self, checked: Any) -> AsyncIterator[str]:
        view = await self.containers.create(checked)
        try:
            yield view.info.id
        finally:
            await asyncio.shield(self._remove(view.info.id))
        await self.say(f"Removing intermediate container {view.info.id[:12]}\n")

    async def _remove(self, container_id: str) -> None:
        try:
            await self.containers.remove(container_id, force=True)
        except Exception as exc:
            log.warning("build.container_not_removed", container_id=container_id, error=str(exc))

    async def _run_container(self, container_id: str) -> int:
        await self.containers.start_container(container_id)

        async def relay() -> None:
            async for record in self.containers.logs(container_id, follow=True):
                await self.say(record.data.decode(errors="replace"))

        relaying = asyncio.ensure_future(relay())
        try:
            exit_info = await self.containers.wait(container_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(relaying), LOG_DRAIN_SECONDS)
        finally:
            relaying.cancel()
            with contextlib.suppress(BaseException):
                await relaying
        return exit_info.exit_code

    # ----- COPY / ADD ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _mounted(self, image: Image | None) -> AsyncIterator[Path]:
        """The image's layers under an overlay with a fresh upper dir, in the scratch dir."""
        self.counter += 1
        base = self.scratch / f"mount-{self.counter}"
        lower = self.store.lower_dirs(image) if image is not None and image.layers else []
        if not lower:
            empty = base / "empty"
            await asyncio.to_thread(empty.mkdir, parents=True)
            lower = [empty]
        layer = ContainerLayer(lower, base)
        await layer.mount()
        try:
            yield base
        finally:
            await asyncio.shield(layer.unmount())

    async def _copy_step(self, stage: _Stage, step: Instruction, context: Path) -> None:
        env = self._env(stage)
        words = list(step.values) if step.json else [expand(v, env) for v in step.values]
        if len(words) < 2:
            raise DockerfileError(f"{step.cmd} requires at least two arguments")
        *sources_text, dest = words
        if any(_is_url(s) for s in sources_text):
            raise DockerfileError(
                f"{step.cmd} from a URL is not supported by dockyard: download it in a RUN step"
            )
        unknown = [f for f in step.flags if not f.startswith(("--chown=", "--from="))]
        if unknown or (step.cmd == "ADD" and step.flag("from") is not None):
            raise DockerfileError(f"{step.cmd}: flag {(unknown or ['--from'])[0]} not supported")
        workdir = stage.draft.runtime.get("WorkingDir") or "/"
        dest_abs = posixpath.normpath(posixpath.join("/", workdir, dest))
        async with contextlib.AsyncExitStack() as stack:
            source_root = context
            from_text = step.flag("from")
            if from_text is not None:
                source_image = await self._image(expand(from_text, env))
                self._hold(source_image.layers)
                source_root = (await stack.enter_async_context(self._mounted(source_image))) / (
                    "rootfs"
                )
            sources: list[Source] = []
            for text in sources_text:
                pattern = text
                if from_text is not None:  # an image's symlinks (/lib -> usr/lib) on the way
                    pattern = await asyncio.to_thread(_resolve_source, source_root, text)
                sources += await asyncio.to_thread(find_sources, source_root, pattern)
            content = await asyncio.to_thread(sources_digest, source_root, sources)
            key = stage.step_key(step, content)
            if await self._cached(stage, key):
                return
            image = await self._checkpoint(stage)
            base = await stack.enter_async_context(self._mounted(image))
            rootfs = base / "rootfs"
            dest_abs = await asyncio.to_thread(_resolve_dest, rootfs, dest_abs)
            dest_is_dir = (
                _names_dir(dest)
                or any(s.is_dir for s in sources)
                or await asyncio.to_thread(is_dir_in, rootfs, dest_abs)
            )
            if len(sources) > 1 and not dest_is_dir:
                raise DockerfileError(
                    f"When using {step.cmd} with more than one source file, the destination "
                    "must be a directory and end with a /"
                )
            chown = step.flag("chown")
            owner = await asyncio.to_thread(resolve_owner, rootfs, chown) if chown else None
            plan = CopyPlan(source_root, sources, dest_abs, dest_is_dir, owner, step.cmd == "ADD")
            await asyncio.to_thread(copy_into, plan, rootfs, base)
            layer = await asyncio.to_thread(layer_from_upper, self.store.blobs, base / "upper")
            self._hold([layer])
        stage.draft.add_layer(layer)
        stage.draft.add_history(f"/bin/sh -c #(nop) {step.original}", False)
        self._remember(stage, key)

    # ----- cleanup -----------------------------------------------------------------

    async def _drop_intermediates(self, keep: str | None) -> None:
        dropped = [d for d in self.made if d != keep and not self.store.is_tagged(d)]
        for digest in dropped:
            with contextlib.suppress(Exception):
                await self.store.delete(digest)
        if dropped:
            with contextlib.suppress(Exception):
                await self.store.gc()


def _names_dir(dest: str) -> bool:
    """A destination written as a directory: ``dir/``, or ``.`` (the working dir, which
    Docker's WORKDIR has made) and ``..``."""
    return dest.endswith("/") or posixpath.basename(dest) in (".", "..")


def _resolve_source(rootfs: Path, pattern: str) -> str:
    """A ``COPY --from`` source with the directories on its way resolved inside the
    image's root (its last name, maybe a glob, is matched as it is)."""
    head, _, last = posixpath.normpath("/" + pattern).rpartition("/")
    if not last:
        return pattern
    try:
        return posixpath.join(resolve_in_root(rootfs, head or "/"), last)
    except UnsafePath as exc:
        raise ContextError(f"{pattern}: {exc}") from None


def _resolve_dest(rootfs: Path, dest: str) -> str:
    """A COPY/ADD destination with the image's symlinks followed inside its root."""
    try:
        return resolve_in_root(rootfs, dest)
    except UnsafePath as exc:
        raise ContextError(f"cannot copy to {dest}: {exc}") from None


def scratch_dir(root: Path) -> Path:
    """A private directory for one build under ``root`` (the agent's state ``tmp``)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="build-", dir=root))


def remove_scratch(path: Path, unmount: bool = False) -> None:
    """Remove a build's scratch directory, never through a mount left in it (blocking).

    ``unmount``: first unmount the overlays a build left there (an agent that died
    mid-build); without it such a directory is kept and logged."""
    if unmount:
        for target in mounted_under(path):
            try:  # the builder's overlays are always <scratch>/mount-N/rootfs
                ContainerLayer([target], target.parent).unmount_blocking()
            except Exception as exc:
                log.error("build.unmount_failed", path=str(target), error=str(exc))
    if mounted_under(path):
        log.error("build.scratch_still_mounted", path=str(path))
        return
    shutil.rmtree(path, ignore_errors=True)


async def recover(tmp: Path, containers: ContainerService) -> None:
    """After an agent restart: what builds left behind (RUN containers, scratch
    directories and their mounts) is removed."""
    for view in await containers.list(all=True):
        if view.info.labels.get(BUILD_LABEL):
            with contextlib.suppress(Exception):
                await containers.remove(view.info.id, force=True)
                log.info("build.container_recovered", container_id=view.info.id)
    leftovers = await asyncio.to_thread(lambda: sorted(tmp.glob("build-*")))
    for path in leftovers:
        await asyncio.to_thread(remove_scratch, path, True)
        log.info("build.scratch_recovered", path=str(path))
