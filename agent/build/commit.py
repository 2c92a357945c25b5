"""`docker commit`: a runc container's writable layer on top of its image, as a new image.

The new image's config is the container's (its image's config with the container's
command, entrypoint, environment, working dir, user, labels and ports over it), then
the ``--change`` instructions; its layers are the image's plus one made of the
container's overlayfs upper dir (``upper.py``). A running container is committed as it
is at that moment (dockerd's ``--pause=false``); Dockyard does not pause containers.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dockyard.agent.build.config_steps import apply_changes, env_map
from dockyard.agent.build.image import ImageDraft
from dockyard.agent.build.upper import layer_from_upper
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Image, Layer
from dockyard.agent.images.reference import Reference
from dockyard.agent.runtime.base import ContainerInfo, ContainerSpec

__all__ = ["CommitRequest", "commit_container", "container_runtime_config", "upper_dir"]

log = structlog.get_logger(__name__)

INTERNAL_LABEL_PREFIX = "dockyard."
"""Labels the agent puts on containers itself; not part of a committed image."""


@dataclass(frozen=True)
class CommitRequest:
    """What ``POST /commit`` asks besides the container."""

    refs: Sequence[Reference] = ()
    changes: Sequence[str] = ()
    author: str = ""
    comment: str = ""


def upper_dir(info: ContainerInfo) -> Path:
    """The container's overlayfs upper dir (runc: beside its log, in its directory)."""
    if info.log_path is None:
        raise ValueError(f"container {info.name} has no writable layer on this runtime")
    return info.log_path.parent / "upper"


def container_runtime_config(spec: ContainerSpec, base: dict[str, Any]) -> dict[str, Any]:
    """The image config's ``config`` object with the container's settings over it."""
    runtime = dict(base)
    if spec.entrypoint is not None:
        runtime["Entrypoint"] = list(spec.entrypoint) or None
        runtime["Cmd"] = list(spec.command) if spec.command is not None else None
    elif spec.command is not None:
        runtime["Cmd"] = list(spec.command)
    env = env_map(runtime)
    for item in spec.env:
        key, _, value = item.partition("=")
        env[key] = value
    runtime["Env"] = [f"{k}={v}" for k, v in env.items()]
    if spec.workdir:
        runtime["WorkingDir"] = spec.workdir
    if spec.user:
        runtime["User"] = spec.user
    labels = dict(runtime.get("Labels") or {})
    labels.update({k: v for k, v in spec.labels.items() if not k.startswith(INTERNAL_LABEL_PREFIX)})
    runtime["Labels"] = labels or None
    ports = dict(runtime.get("ExposedPorts") or {})
    ports.update({f"{p.container_port}/{p.protocol}": {} for p in spec.ports})
    runtime["ExposedPorts"] = ports or None
    return {k: v for k, v in runtime.items() if v is not None}


async def commit_container(
    store: ImageStore, base: Image, info: ContainerInfo, request: CommitRequest
) -> Image:
    """Store the container's changes as a new image; returns it.

    Raises:
        DockerfileError: a change that commit does not take.
        ValueError: the container has no writable layer here.
    """
    draft = await ImageDraft.from_image(store, base)
    draft.config["config"] = container_runtime_config(info.config, draft.runtime)
    apply_changes(list(request.changes), draft.runtime)
    upper = upper_dir(info)
    with store.lease() as lease:  # a concurrent gc keeps the new layer until it is recorded
        layer = await asyncio.to_thread(layer_from_upper, store.blobs, upper)
        lease.add(layer.digest, layer.diff_id)
        image = await _finish(store, draft, layer, info, request)
    log.info(
        "image.committed",
        container_id=info.id,
        image=image.id,
        layer=layer.digest,
        refs=[str(r) for r in request.refs],
    )
    return image


async def _finish(
    store: ImageStore, draft: ImageDraft, layer: Layer, info: ContainerInfo, request: CommitRequest
) -> Image:
    draft.add_layer(layer)
    command = shlex.join(info.config.command or info.config.entrypoint or [])
    draft.add_history(command, False, request.author, request.comment)
    if request.author:
        draft.config["author"] = request.author
    if request.comment:
        draft.config["comment"] = request.comment
    draft.touch()
    return await draft.store(store, request.refs)
