"""`image load` and `import` read archives with bounds: JSON documents up to 4 MiB (as
containerd reads them), a member's declared size at most the store's free space and the
layer byte limit (checked before tarfile decompresses past it), at most so many
members, and an import's uncompressed stream within the layer budget."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from dockyard.agent.images import archive
from dockyard.agent.images.archive import MAX_DOCUMENT_BYTES, import_rootfs, load
from dockyard.agent.images.errors import ImageStoreError, LayerError
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.unpack_limits import UnpackLimits
from tests.images.test_unpack_hostile import needs_root
from tests.images.test_unpack_limits import MiB, Zeros, plain_tar, small_fs

__all__ = ["small_fs"]  # the fixture, used here


def layer_bytes() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return out.getvalue()


def config_bytes(pad: int = 0) -> bytes:
    diff_id = "sha256:" + hashlib.sha256(layer_bytes()).hexdigest()
    return (
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        + b" " * pad
    )


def docker_archive(
    path: Path,
    *,
    manifest_pad: int = 0,
    config_pad: int = 0,
    extra: dict[str, int] | None = None,
    compress: bool = False,
) -> Path:
    """A docker-save archive of one image; ``extra`` adds zero-filled members."""
    manifest = (
        json.dumps(
            [{"Config": "config.json", "RepoTags": ["x/y:z"], "Layers": ["layer.tar"]}]
        ).encode()
        + b" " * manifest_pad
    )
    members = [
        ("manifest.json", manifest),
        ("config.json", config_bytes(config_pad)),
        ("layer.tar", layer_bytes()),
    ]
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        for name, size in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, Zeros(size))  # type: ignore[arg-type]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_well_formed_archive_loads(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    images = asyncio.run(load(store, docker_archive(tmp_path / "a.tar")))
    assert [str(r) for r in images[0].references] == ["docker.io/x/y:z"]


@pytest.mark.parametrize("document", ["manifest.json", "config"])
def test_a_document_over_4_mib_is_refused(tmp_path: Path, document: str) -> None:
    pad = MAX_DOCUMENT_BYTES  # valid JSON padded with spaces past the limit
    path = docker_archive(
        tmp_path / "a.tar",
        manifest_pad=pad if document != "config" else 0,
        config_pad=pad if document == "config" else 0,
    )
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageStoreError, match=f"over the {MAX_DOCUMENT_BYTES}-byte limit"):
        asyncio.run(load(store, path))
    assert not any((tmp_path / "store" / "images").iterdir())  # no image recorded


def test_an_oci_index_over_4_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "oci.tar"
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode() + b" " * MAX_DOCUMENT_BYTES
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ImageStoreError, match=r"index.json declares .* over the"):
        asyncio.run(load(ImageStore(tmp_path / "store"), path))


def test_a_member_over_the_layer_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A gzip archive whose first member is 64 MiB of zeros (some KiB compressed)."""
    path = docker_archive(tmp_path / "bomb.tar.gz", extra={"bomb": 64 * MiB}, compress=True)
    assert path.stat().st_size < MiB
    store = ImageStore(tmp_path / "store", UnpackLimits(max_bytes=8 * MiB))
    with pytest.raises(
        ImageStoreError, match=f"'bomb' declares {64 * MiB} bytes, over the {8 * MiB}-byte limit"
    ):
        asyncio.run(load(store, path))


@needs_root
def test_a_member_over_the_free_space_is_refused(small_fs: Path, tmp_path: Path) -> None:
    path = docker_archive(tmp_path / "bomb.tar.gz", extra={"bomb": 64 * MiB}, compress=True)
    store = ImageStore(small_fs / "store")
    with pytest.raises(ImageStoreError, match=r"declares \d+ bytes, over the \d+ bytes free"):
        asyncio.run(load(store, path))
    assert not any(p.is_file() for p in (small_fs / "store" / "blobs").rglob("*"))


def test_members_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_ARCHIVE_MEMBERS", 50)
    path = docker_archive(tmp_path / "many.tar", extra={f"e{i}": 0 for i in range(50)})
    with pytest.raises(ImageStoreError, match="more than 50 entries"):
        asyncio.run(load(ImageStore(tmp_path / "store"), path))


def test_an_import_bomb_stops_at_the_layer_limit(tmp_path: Path) -> None:
    plain = plain_tar(tmp_path / "rootfs.tar", {"zeros": 64 * MiB})
    bomb = tmp_path / "rootfs.tar.gz"
    bomb.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
    store = ImageStore(tmp_path / "store", UnpackLimits(max_bytes=8 * MiB))
    with pytest.raises(LayerError, match=f"more than {8 * MiB} bytes"):
        asyncio.run(import_rootfs(store, bomb, parse_reference("x/y:z")))
    assert not any(p.is_file() for p in (tmp_path / "store" / "blobs").rglob("*"))
