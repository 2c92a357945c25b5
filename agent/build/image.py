"""`ImageDraft`: an image being made on the node, stored as a new image.

A draft starts from an image of the store (its config JSON read as it is, so fields
Dockyard does not model, Healthcheck or Volumes, are kept) or from nothing
(``scratch``); steps change its runtime config, add layers and history entries. Storing
it writes its config and manifest blobs and records the image (``ImageStore.commit``
unpacks the new layers into snapshots, so a container can run on it at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dockyard.agent.images.authoring import oci_manifest, put_blob
from dockyard.agent.images.content import canonical_json, parse_json
from dockyard.agent.images.errors import ImageNotFound
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Image, Layer
from dockyard.agent.images.reference import Reference
from dockyard.common.distribution.platform import Platform

__all__ = ["ImageDraft", "now"]


def now() -> str:
    """The current time as image configs write it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ImageDraft:
    """An OCI image config (as a dict) and its layers, bottom first."""

    config: dict[str, Any]
    layers: list[Layer] = field(default_factory=list)

    @classmethod
    async def from_image(cls, store: ImageStore, image: Image) -> ImageDraft:
        """A draft that starts as ``image`` (its config copied, its layers kept)."""
        raw = parse_json(await store.blobs.read(image.config_digest), f"config {image.id}")
        config = copy.deepcopy(raw)
        config.setdefault("config", {})
        config["config"] = config["config"] or {}
        config.setdefault("history", [])
        return cls(config, list(image.layers))

    @classmethod
    def scratch(cls, platform: Platform) -> ImageDraft:
        """An empty image (``FROM scratch``)."""
        config: dict[str, Any] = {
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Env": []},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
            "created": now(),
        }
        if platform.variant:
            config["variant"] = platform.variant
        return cls(config)

    @property
    def runtime(self) -> dict[str, Any]:
        """The config's ``config`` object (Cmd, Env, ...), changed in place by steps."""
        value: dict[str, Any] = self.config["config"]
        return value

    def copy(self) -> ImageDraft:
        """An independent copy (a step's result, before the next step changes it)."""
        return ImageDraft(copy.deepcopy(self.config), list(self.layers))

    def add_history(
        self, created_by: str, empty_layer: bool, author: str = "", comment: str = ""
    ) -> None:
        """One ``history`` entry (an instruction that added a layer or only config)."""
        entry: dict[str, Any] = {"created": now(), "created_by": created_by}
        if author:
            entry["author"] = author
        if comment:
            entry["comment"] = comment
        if empty_layer:
            entry["empty_layer"] = True
        self.config.setdefault("history", []).append(entry)

    def add_layer(self, layer: Layer) -> None:
        """Put ``layer`` on top."""
        self.layers.append(layer)

    def touch(self) -> None:
        """The draft changed: its config's ``created`` is now."""
        self.config["created"] = now()

    def image_id(self) -> str:
        """The id the draft gets when stored (the digest of its config)."""
        return "sha256:" + hashlib.sha256(self._config_bytes()).hexdigest()

    def _config_bytes(self) -> bytes:
        config = copy.deepcopy(self.config)
        config.setdefault("created", "1970-01-01T00:00:00Z")
        config["rootfs"] = {"type": "layers", "diff_ids": [x.diff_id for x in self.layers]}
        config.pop("container", None)  # dockerd's, naming the container it came from
        config.pop("container_config", None)
        return canonical_json(config)

    async def store(self, store: ImageStore, refs: Iterable[Reference] = ()) -> Image:
        """Write the config and manifest and record the image, named ``refs``."""
        config_bytes = self._config_bytes()
        with store.lease() as lease:
            for layer in self.layers:
                lease.add(layer.digest, layer.diff_id)
            config_digest = await asyncio.to_thread(put_blob, store.blobs, config_bytes)
            lease.add(config_digest)
            manifest = oci_manifest(config_digest, len(config_bytes), self.layers)
            manifest_bytes = canonical_json(manifest)
            digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
            with contextlib.suppress(ImageNotFound):
                found = store.get(digest)  # the same image again (a build from the cache)
                for ref in refs:
                    await store.tag(found, ref)
                return store.get(digest)
            digest = await asyncio.to_thread(put_blob, store.blobs, manifest_bytes)
            lease.add(digest)
            return await store.commit(digest, list(refs))
