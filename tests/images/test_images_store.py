from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from dockyard.agent.images.build import build_image, busybox_layer, busybox_spec, whiteout_layers
from dockyard.agent.images.errors import DigestMismatch, ImageStoreError, LayerError
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.unpack import OPAQUE_XATTR, unpack_layer
from dockyard.common.distribution.media import sha256_digest


def run(args: list[str]) -> str:
    """mount/umount/busybox: quick, and a test may block its own loop for them."""
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def leftovers(store: ImageStore) -> list[Path]:
    return list(store.blobs.tmp_dir.iterdir())


async def test_put_and_read(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    digest = await store.blobs.put_bytes(b"hello", sha256_digest(b"hello"))
    assert store.blobs.read_bytes(digest) == b"hello"
    assert oct(store.blobs.path(digest).stat().st_mode)  # exists


async def test_mismatching_digest_leaves_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    wrong = sha256_digest(b"other")
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        await store.blobs.put_bytes(b"hello" * 300_000, wrong)
    assert store.blobs.digests() == set()
    assert leftovers(store) == []


async def test_partial_write_leaves_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        async with store.blobs.writer(sha256_digest(b"x" * 3_000_000)) as writer:
            await writer.write(b"x" * 2_000_000)  # flushed to the temp file
            raise ConnectionResetError("peer went away")
    assert store.blobs.digests() == set()
    assert leftovers(store) == []


def test_leftover_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    (store.blobs.tmp_dir / "ingest-crashed").write_bytes(b"x")
    ImageStore(tmp_path)
    assert leftovers(store) == []


@needs_root
async def test_no_space_left(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)])
    try:
        store = ImageStore(mnt)
        data = os.urandom(1 << 20)
        with pytest.raises(ImageStoreError, match=f"{sha256_digest(data)}.*no space left"):
            await store.blobs.put_bytes(data, sha256_digest(data))
        assert store.blobs.digests() == set()
        assert leftovers(store) == []
    finally:
        run(["umount", str(mnt)])


def _tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "layer.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(_member("../evil"), b"x")], "escapes"),
        ([(_member("a/../../evil"), b"x")], "escapes"),
        ([(_member("/etc/evil"), b"x")], "absolute"),
        (
            [(_member("link", tarfile.SYMTYPE, "/tmp"), None), (_member("link/evil"), b"x")],
            "through a symlink",
        ),
        (
            [(_member("up", tarfile.SYMTYPE, ".."), None), (_member("up/evil"), b"x")],
            "through a symlink",
        ),
        ([(_member("hl", tarfile.LNKTYPE, "../../etc/passwd"), None)], "escapes"),
    ],
)
def test_unsafe_layers_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    blob = _tar(tmp_path, *members)
    dest = tmp_path / "root" / "snap"
    dest.mkdir(parents=True)
    with pytest.raises(LayerError, match=reason):
        unpack_layer(blob, dest)
    assert not (tmp_path / "root" / "evil").exists()
    assert not (tmp_path / "evil").exists()


@needs_root
def test_ownership_modes_links_devices(tmp_path: Path) -> None:
    owned = _member("owned")
    owned.uid, owned.gid, owned.mode = 1234, 5678, 0o4755
    dev = _member("null", tarfile.CHRTYPE)
    dev.devmajor, dev.devminor = 1, 3
    blob = _tar(
        tmp_path,
        (owned, b"data"),
        (_member("hard", tarfile.LNKTYPE, "owned"), None),
        (_member("sym", tarfile.SYMTYPE, "/nowhere"), None),
        (dev, None),
    )
    dest = tmp_path / "snap"
    dest.mkdir()
    diff_id = unpack_layer(blob, dest)
    assert diff_id == sha256_digest(blob.read_bytes())
    st = os.lstat(dest / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    assert os.lstat(dest / "hard").st_ino == st.st_ino
    assert os.readlink(dest / "sym") == "/nowhere"
    dev_st = os.lstat(dest / "null")
    assert stat.S_ISCHR(dev_st.st_mode) and dev_st.st_rdev == os.makedev(1, 3)


@needs_root
async def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = await build_image(store, whiteout_layers(), parse_reference("wh"), busybox_spec())
    lowers = store.lower_dirs(image)
    assert len(lowers) == 3
    top = lowers[0]
    for name in ("file-gone", "gone"):
        st = os.lstat(top / "data" / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(top / "data" / "opq", OPAQUE_XATTR) == b"y"
    assert (lowers[2] / "bin" / "busybox").is_file()
    assert os.lstat(lowers[0]).st_mode & 0o777 == 0o755

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)])
    try:
        data = mnt / "data"
        assert sorted(os.listdir(data)) == ["keep", "opq"]
        assert sorted(os.listdir(data / "keep")) == ["a", "b"]
        assert os.listdir(data / "opq") == ["new"]
        assert (mnt / "bin" / "busybox").is_file()
        out = run([str(mnt / "bin" / "busybox"), "cat", str(data / "opq" / "new")])
        assert out == "new\n"
    finally:
        run(["umount", str(mnt)])


async def test_layers_unpacked_once_and_refcounted(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    base = await build_image(store, [busybox_layer()], parse_reference("bb"), busybox_spec())
    other = await build_image(store, whiteout_layers(), parse_reference("wh"), busybox_spec())
    # the busybox layer is gzip'd deterministically: both images share its snapshot
    assert base.layers[0].diff_id == other.layers[0].diff_id
    assert store.snapshot_refcounts()[base.layers[0].diff_id] == 2
    assert len(list(store.snapshots_dir.iterdir())) == 3
    reopened = ImageStore(tmp_path)
    assert reopened.resolve("wh").digest == other.digest
    assert reopened.resolve("wh").config.cmd == ["sh"]
