"""Hostile layers pulled from a real `docker-registry`: the pull is refused naming the
layer, nothing beside the store changes, and the store keeps no snapshot of it.

The images are pushed without ever being unpacked on the pushing side (their blobs are
written to a store and pushed as they are), so only the pulling store meets them.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.images.authoring import ImageSpec, LayerWriter, write_image
from dockyard.agent.images.build import busybox_spec
from dockyard.agent.images.content import describe_image, parse_json
from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.agent.images.transfer import push_image
from dockyard.common.distribution.registry import RegistryClient, RegistryConfig
from tests.images.test_unpack_hostile import tree_state

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, devices)"),
]

ATTACKS: dict[str, list[tuple[str, str, str]]] = {  # kind, name, link
    "whiteout-dotdot": [("file", ".wh...", "")],
    "through-symlink": [("sym", "s", "@SENTINEL@"), ("file", "s/evil", "")],
    "hardlink-out": [("link", "h", "@SENTINEL@/file")],
    "escape": [("file", "../../../../sentinel/file", "")],
}


def fast() -> RegistryConfig:
    return RegistryConfig(attempts=2, retry_delay=0.05, connect_timeout=2)


async def push_unpacked(
    service: ImageService, ref: str, items: list[tuple[str, str, str]], sentinel: Path
) -> None:
    """Write a one-layer image's blobs and push them, never unpacking the layer here."""
    writer = LayerWriter(service.store.blobs)
    for kind, name, link in items:
        info = tarfile.TarInfo(name)
        info.type = {"file": tarfile.REGTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}[kind]
        info.linkname = link.replace("@SENTINEL@", str(sentinel))
        info.mode = 0o4777
        data = b"pwned\n" if kind == "file" else b""
        info.size = len(data)
        writer.tar.addfile(info, io.BytesIO(data) if data else None)
    layer = writer.close()
    digest = write_image(service.store.blobs, [layer], ImageSpec(config=busybox_spec().config))
    manifest = parse_json(service.store.blobs.read_bytes(digest), "manifest")
    config = parse_json(service.store.blobs.read_bytes(manifest["config"]["digest"]), "config")
    image = describe_image(digest, manifest, config)
    reference = parse_reference(ref)
    async with RegistryClient(service.registry) as client:
        await push_image(client, service.store, image, reference, lambda _: None)


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_hostile_layer_from_a_registry_is_refused(
    registry: Any, tmp_path: Path, attack: str
) -> None:
    sentinel = tmp_path / "sentinel"
    (sentinel / "dir").mkdir(parents=True)
    (sentinel / "file").write_bytes(b"host file\n")
    source = ImageService(tmp_path / "push", fast())
    ref = f"{registry.host}/hostile/{attack}:v1"
    await push_unpacked(source, ref, ATTACKS[attack], sentinel)

    target = ImageService(tmp_path / "store", fast())
    other = target.store.snapshots_dir / ("0" * 64)  # another image's layer
    other.mkdir()
    (other / "kept").write_bytes(b"kept\n")
    before = (tree_state(sentinel), tree_state(other))
    with pytest.raises(LayerError):
        await target.pull(ref)
    assert (tree_state(sentinel), tree_state(other)) == before
    assert os.listdir(target.store.snapshots_dir) == [other.name]
    assert target.store.images() == []
