"""Decompression bombs and inode exhaustion: a layer's unpacked bytes and entries are
bounded (an absolute cap and a share of the store filesystem's free space and inodes),
and a layer over a bound is refused naming the limit, with no snapshot left behind.

The free-space cases run on a real small tmpfs mounted for the test (root only)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from dockyard.agent.images.errors import LayerError
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Layer
from dockyard.agent.images.unpack_limits import UnpackLimits
from tests.images.test_unpack_hostile import needs_root

MiB = 1 << 20


class Zeros:
    """``size`` zero bytes, read in pieces (a bomb's payload never held whole)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def plain_tar(path: Path, files: dict[str, int], trailing: int = 0) -> Path:
    """A tar of zero-filled files (name -> size), then ``trailing`` zero bytes after
    the end of the archive."""
    with path.open("wb") as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, size in files.items():
                info = tarfile.TarInfo(name)
                info.size = size
                tar.addfile(info, Zeros(size))  # type: ignore[arg-type]
        source = Zeros(trailing)
        while chunk := source.read(MiB):
            out.write(chunk)
    return path


def compress(plain: Path, kind: str) -> bytes:
    data = plain.read_bytes()
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1)
    return zstandard.ZstdCompressor(level=1).compress(data)


async def store_layer(store: ImageStore, plain: Path, kind: str) -> Layer:
    blob = compress(plain, kind)
    digest = await store.blobs.put_bytes(blob)
    diff_id = "sha256:" + hashlib.sha256(await asyncio.to_thread(plain.read_bytes)).hexdigest()
    return Layer(digest, len(blob), "application/vnd.oci.image.layer.v1.tar+" + kind, diff_id)


def assert_nothing_left(store: ImageStore) -> None:
    assert sorted(p.name for p in store.snapshots_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("shape", ["file", "trailing"])
def test_a_decompression_bomb_stops_at_the_byte_limit(
    tmp_path: Path, kind: str, shape: str
) -> None:
    """64 MiB of zeros (in a file, or after the archive's end) from a blob of some KiB."""
    plain = plain_tar(
        tmp_path / "bomb.tar",
        {"zeros": 64 * MiB} if shape == "file" else {"small": 10},
        trailing=64 * MiB if shape == "trailing" else 0,
    )
    store = ImageStore(tmp_path / "store", UnpackLimits(max_bytes=8 * MiB))

    async def unpack() -> None:
        layer = await store_layer(store, plain, kind)
        assert layer.size < MiB
        await store.ensure_snapshot(layer)

    with pytest.raises(
        LayerError, match=f"more than {8 * MiB} bytes, over the {8 * MiB}-byte limit on a layer"
    ):
        asyncio.run(unpack())
    assert_nothing_left(store)


def test_a_layer_within_the_byte_limit_is_unpacked(tmp_path: Path) -> None:
    plain = plain_tar(tmp_path / "ok.tar", {"zeros": 4 * MiB})
    store = ImageStore(tmp_path / "store", UnpackLimits(max_bytes=8 * MiB))

    async def unpack() -> Path:
        return await store.ensure_snapshot(await store_layer(store, plain, "gzip"))

    assert (asyncio.run(unpack()) / "zeros").stat().st_size == 4 * MiB


def test_entries_are_bounded(tmp_path: Path) -> None:
    limits = UnpackLimits(max_entries=100)
    at_limit = plain_tar(tmp_path / "100.tar", {f"f{i}": 0 for i in range(100)})
    over = plain_tar(tmp_path / "101.tar", {f"f{i}": 0 for i in range(101)})
    store = ImageStore(tmp_path / "store", limits)

    async def unpack(plain: Path) -> Path:
        return await store.ensure_snapshot(await store_layer(store, plain, "gzip"))

    with pytest.raises(LayerError, match="more than 100 entries, over the 100-entry limit"):
        asyncio.run(unpack(over))
    assert_nothing_left(store)
    assert len(list(asyncio.run(unpack(at_limit)).iterdir())) == 100


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 32 MiB and 400 inodes, unmounted however the test ends."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=32m,nr_inodes=400,mode=0700",
            "dockyard-test",
            str(mount),
        ],
        check=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_bomb_never_fills_the_store_filesystem(small_fs: Path, tmp_path: Path) -> None:
    plain = plain_tar(tmp_path / "bomb.tar", {"zeros": 64 * MiB})
    store = ImageStore(small_fs / "store")  # the default limits

    async def unpack() -> None:
        await store.ensure_snapshot(await store_layer(store, plain, "zstd"))

    with pytest.raises(LayerError, match=r"over 90% of the \d+ bytes free in the image store"):
        asyncio.run(unpack())
    assert_nothing_left(store)


@needs_root
def test_a_layer_of_empty_entries_never_takes_the_last_inodes(
    small_fs: Path, tmp_path: Path
) -> None:
    plain = plain_tar(tmp_path / "many.tar", {f"f{i}": 0 for i in range(500)})
    store = ImageStore(small_fs / "store")

    async def unpack() -> None:
        await store.ensure_snapshot(await store_layer(store, plain, "gzip"))

    with pytest.raises(LayerError, match=r"over 90% of the \d+ inodes free in the image store"):
        asyncio.run(unpack())
    assert_nothing_left(store)
