"""Hostile layer tarballs: nothing outside the layer's own directory may change.

Each test builds a small tarball, unpacks it into a temporary snapshot directory
inside a store-like tree, and checks a sentinel tree beside the store (modes, bytes,
mtimes, owners) and the store's other snapshots are exactly as they were.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from dockyard.agent.images.archive import import_rootfs, load
from dockyard.agent.images.confine import KEEP_CAPABILITIES, capabilities, run_confined
from dockyard.agent.images.errors import ImageStoreError, LayerError
from dockyard.agent.images.image_store import ImageStore
from dockyard.agent.images.models import Layer
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.unpack import MAX_HEADER_BYTES, OPAQUE_XATTR, unpack_layer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

Entry = tuple[tarfile.TarInfo, bytes | None]


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    mode: int = 0o644,
    mtime: int = 1_000_000,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.mtime = mtime
    return info


def write_tar(path: Path, entries: list[Entry]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under (and including) `root`: inode, mode, owner, links, size, mtime,
    ctime (any chmod, chown, link or xattr change moves it) and content or link target."""
    state: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            state[os.path.relpath(path, root)] = (
                st.st_ino,
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                content,
            )
    return state


class Site:
    """`<tmp>/sentinel/` (host files an attacker aims at) beside `<tmp>/store/snapshots/`."""

    def __init__(self, tmp: Path, use_openat2: bool = True) -> None:
        self.tmp = tmp
        self.use_openat2 = use_openat2
        self.sentinel = tmp / "sentinel"
        (self.sentinel / "dir").mkdir(parents=True)
        (self.sentinel / "file").write_bytes(b"host secret\n")
        (self.sentinel / "dir" / "inner").write_bytes(b"inner\n")
        os.chmod(self.sentinel / "file", 0o600)
        os.chmod(self.sentinel / "dir", 0o750)
        self.snapshots = tmp / "store" / "snapshots"
        (self.snapshots / "other").mkdir(parents=True)
        (self.snapshots / "other" / "kept").write_bytes(b"another image\n")
        self.dest = self.snapshots / ".tmp-layer"
        self.dest.mkdir()
        self.before = self.outside()

    def outside(self) -> dict[str, object]:
        return {
            "sentinel": tree_state(self.sentinel),
            "other": tree_state(self.snapshots / "other"),
            "snapshots": sorted(os.listdir(self.snapshots)),
            "tmp": sorted(os.listdir(self.tmp)),
        }

    def unpack(self, entries: list[Entry]) -> str:
        blob = write_tar(self.tmp / "layer.tar", entries)
        self.before = self.outside()  # the layer.tar itself is expected
        return unpack_layer(blob, self.dest, use_openat2=self.use_openat2)

    def assert_untouched(self) -> None:
        assert self.outside() == self.before


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Site:
    """Both resolvers: openat2 (where the kernel has it) and the O_NOFOLLOW walk."""
    return Site(tmp_path, use_openat2=request.param)


def test_deferred_dir_metadata_does_not_follow_a_later_symlink(site: Site) -> None:
    target = str(site.sentinel / "file")
    entries: list[Entry] = [
        (entry("d", tarfile.DIRTYPE, mode=0o4777, mtime=12345), None),
        (entry("d", tarfile.SYMTYPE, link=target), None),
    ]
    site.unpack(entries)
    site.assert_untouched()
    assert os.readlink(site.dest / "d") == target


def test_deferred_root_metadata_does_not_follow_a_dir_replaced_by_symlink(site: Site) -> None:
    entries: list[Entry] = [
        (entry("a/b", tarfile.DIRTYPE, mode=0o777), None),
        (entry("a", tarfile.SYMTYPE, link=str(site.sentinel / "dir")), None),
    ]
    site.unpack(entries)
    site.assert_untouched()


@pytest.mark.parametrize("name", [".wh...", ".wh..", "x/.wh...", ".wh.", "./.wh..."])
def test_whiteout_of_dot_or_dotdot_is_refused(site: Site, name: str) -> None:
    (site.dest / "x").mkdir()
    with pytest.raises(LayerError, match="whiteout"):
        site.unpack([(entry(name), b"")])
    site.assert_untouched()
    assert site.dest.is_dir()


def test_whiteout_through_a_symlink_is_refused(site: Site) -> None:
    entries: list[Entry] = [
        (entry("up", tarfile.SYMTYPE, link=str(site.sentinel)), None),
        (entry("up/.wh.file"), b""),
    ]
    with pytest.raises(LayerError, match="symlink"):
        site.unpack(entries)
    site.assert_untouched()


@needs_root
def test_whiteout_of_a_symlink_removes_the_link_only(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel / "dir")), None),
        (entry(".wh.s"), b""),
    ]
    site.unpack(entries)
    site.assert_untouched()
    st = os.lstat(site.dest / "s")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@needs_root
def test_opaque_marker_through_a_symlink_is_refused(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel / "dir")), None),
        (entry("s/.wh..wh..opq"), b""),
    ]
    with pytest.raises(LayerError, match="symlink"):
        site.unpack(entries)
    site.assert_untouched()
    with pytest.raises(OSError):
        os.getxattr(site.sentinel / "dir", OPAQUE_XATTR)


def test_file_over_a_symlink_replaces_the_link(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel / "file")), None),
        (entry("s", mode=0o4777), b"pwned"),
    ]
    site.unpack(entries)
    site.assert_untouched()
    assert (site.dest / "s").read_bytes() == b"pwned"


def test_hard_link_through_a_symlink_is_refused(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel)), None),
        (entry("h", tarfile.LNKTYPE, link="s/file"), None),
    ]
    with pytest.raises(LayerError, match="symlink"):
        site.unpack(entries)
    site.assert_untouched()


@needs_root
def test_hard_link_to_a_symlink_links_the_symlink(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel / "file")), None),
        (entry("h", tarfile.LNKTYPE, link="s"), None),
        (entry("h", mode=0o777), b"x"),
    ]
    site.unpack(entries)
    site.assert_untouched()


def test_symlink_then_dir_of_the_same_name(site: Site) -> None:
    entries: list[Entry] = [
        (entry("s", tarfile.SYMTYPE, link=str(site.sentinel / "dir")), None),
        (entry("s", tarfile.DIRTYPE, mode=0o777), None),
        (entry("s/inner", mode=0o777), b"layer"),
    ]
    site.unpack(entries)
    site.assert_untouched()
    assert stat.S_ISDIR(os.lstat(site.dest / "s").st_mode)
    assert (site.dest / "s" / "inner").read_bytes() == b"layer"


@pytest.mark.parametrize("name", ["", "/", "a//../..", "/etc/x", "../x", "a/../../x"])
def test_bad_names_are_refused(site: Site, name: str) -> None:
    with pytest.raises(LayerError):
        site.unpack([(entry(name), b"x")])
    site.assert_untouched()


def test_very_long_names_and_deep_nesting_are_refused_cleanly(site: Site) -> None:
    with pytest.raises(LayerError, match="long"):
        site.unpack([(entry("a" * 300), b"x")])
    with pytest.raises(LayerError, match=r"long|deep"):
        site.unpack([(entry("d/" * 3000 + "f"), b"x")])
    site.assert_untouched()


def test_nested_layer_still_unpacks(site: Site) -> None:
    deep = "/".join(["d"] * 100)
    site.unpack([(entry(deep + "/f"), b"deep")])
    assert (site.dest / deep / "f").read_bytes() == b"deep"


@needs_root
def test_unpacking_thread_is_chrooted_with_fewer_capabilities(tmp_path: Path) -> None:
    (tmp_path / "inside").write_bytes(b"")
    before = capabilities()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        seen = run_confined(fd, lambda got: (got, capabilities(), os.listdir("/"), os.umask(0o22)))
    finally:
        os.close(fd)
    got, (effective, permitted), listing, umask = seen
    assert got.chrooted and got.private_fs
    assert listing == ["inside"]
    assert umask == 0
    keep = sum(1 << cap for cap in KEEP_CAPABILITIES)
    assert effective & ~keep == 0 and permitted & ~keep == 0
    assert capabilities() == before  # the rest of the process keeps its own
    assert os.listdir("/") != ["inside"]


@needs_root
def test_refused_layer_leaves_no_snapshot(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    before = sorted(os.listdir(store.snapshots_dir))
    blob = write_tar(
        tmp_path / "bad.tar",
        [(entry("a/b", tarfile.DIRTYPE), None), (entry("a/b/c"), b"x"), (entry("a/.wh..."), b"")],
    )
    data = blob.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.blobs.path(digest).write_bytes(data)
    layer = Layer(digest, len(data), "application/vnd.oci.image.layer.v1.tar", digest)
    with pytest.raises(LayerError, match="whiteout"):
        asyncio.run(store.ensure_snapshot(layer))
    assert sorted(os.listdir(store.snapshots_dir)) == before


def test_oversized_pax_header_is_refused_before_it_is_read(site: Site) -> None:
    info = entry("f")
    info.pax_headers = {"comment": "x" * (MAX_HEADER_BYTES + 1)}
    with pytest.raises(LayerError, match="header record"):
        site.unpack([(info, b"data")])
    site.assert_untouched()


def test_sparse_file_keeps_its_holes(site: Site) -> None:
    """A GNU sparse entry of 256 MiB with 6 bytes of data must not write 256 MiB of zeros."""
    source = site.tmp / "src"
    source.mkdir()
    with (source / "sparse").open("wb") as out:
        out.truncate(256 << 20)
        out.seek((256 << 20) - 6)
        out.write(b"tail!\n")
    blob = site.tmp / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", str(blob), "-C", str(source), "sparse"],
        check=True,
    )
    site.before = site.outside()
    diff_id = unpack_layer(blob, site.dest, use_openat2=site.use_openat2)
    assert diff_id == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    unpacked = site.dest / "sparse"
    assert unpacked.stat().st_size == 256 << 20
    with unpacked.open("rb") as f:
        f.seek((256 << 20) - 6)
        assert f.read() == b"tail!\n"
    assert unpacked.stat().st_blocks * 512 < 1 << 20
    site.assert_untouched()


def test_image_archive_with_an_oversized_header_is_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    info = entry("manifest.json")
    info.pax_headers = {"comment": "x" * (MAX_HEADER_BYTES + 1)}
    archive = write_tar(tmp_path / "image.tar", [(info, b"[]")])
    with pytest.raises(ImageStoreError, match="header record"):
        asyncio.run(load(store, archive))
    assert store.images() == []


@needs_root
def test_xattrs_kept_on_files_and_dirs_but_never_trusted_ones(site: Site) -> None:
    d = entry("d", tarfile.DIRTYPE, mode=0o755)
    f = entry("d/f")
    for info in (d, f):
        info.pax_headers = {
            "SCHILY.xattr.user.note": "kept",
            "SCHILY.xattr.trusted.overlay.redirect": "/etc",
            "SCHILY.xattr.trusted.overlay.opaque": "y",
        }
    site.unpack([(d, None), (f, b"x")])
    for path in (site.dest / "d", site.dest / "d" / "f"):
        assert os.getxattr(path, "user.note") == b"kept"
        assert not [x for x in os.listxattr(path) if x.startswith("trusted.")]


def test_store_is_closed_to_other_users(tmp_path: Path) -> None:
    """A layer's 1777 /tmp must not be a door for the host's other users into a lower dir."""
    root = tmp_path / "images"
    root.mkdir(mode=0o755)
    ImageStore(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


@pytest.mark.parametrize("verb", ["load", "import"])
def test_archive_that_is_no_regular_file_is_refused(tmp_path: Path, verb: str) -> None:
    """A FIFO as the archive would block a worker thread for good (and /dev/zero never end)."""
    store = ImageStore(tmp_path / "store")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    call = (
        load(store, fifo)
        if verb == "load"
        else import_rootfs(store, fifo, parse_reference("x/y:z"))
    )
    with pytest.raises(ImageStoreError, match="not a regular file"):
        asyncio.run(asyncio.wait_for(call, 10))


@pytest.mark.parametrize("headers", [{"mtime": "1e30"}, {"uid": str(1 << 40)}, {"mtime": "nan"}])
def test_out_of_range_metadata_is_a_layer_error(site: Site, headers: dict[str, str]) -> None:
    info = entry("f")
    info.pax_headers = headers
    with pytest.raises(LayerError):
        site.unpack([(info, b"x")])
    site.assert_untouched()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corrupt_compressed_layer_is_a_layer_error(tmp_path: Path, kind: str) -> None:
    plain = write_tar(tmp_path / "l.tar", [(entry("f"), b"x" * 100_000)]).read_bytes()
    if kind == "gzip":
        data = bytearray(gzip.compress(plain))
    else:
        data = bytearray(zstandard.ZstdCompressor().compress(plain))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LayerError, match="cannot unpack"):
        unpack_layer(blob, dest)


@pytest.mark.parametrize("link", ["SENTINEL", "../../SENTINEL"])
def test_image_archive_never_reads_host_files_through_its_links(tmp_path: Path, link: str) -> None:
    """`layer.tar` in the archive is a symlink to a host file that holds a valid layer:
    the archive must not borrow it (tarfile only resolves links among its own members)."""
    host_layer = write_tar(tmp_path / "host-layer.tar", [(entry("stolen"), b"host data")])
    diff_id = "sha256:" + hashlib.sha256(host_layer.read_bytes()).hexdigest()
    config = (
        b'{"architecture":"amd64","os":"linux","config":{},'
        b'"rootfs":{"type":"layers","diff_ids":["' + diff_id.encode() + b'"]}}'
    )
    manifest = b'[{"Config":"config.json","RepoTags":["x/y:z"],"Layers":["layer.tar"]}]'
    target = link.replace("SENTINEL", str(host_layer))
    archive = write_tar(
        tmp_path / "image.tar",
        [
            (entry("config.json"), config),
            (entry("layer.tar", tarfile.SYMTYPE, link=target), None),
            (entry("manifest.json"), manifest),
        ],
    )
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageStoreError, match="not in the archive"):
        asyncio.run(load(store, archive))
    assert store.images() == []
    assert os.listdir(store.snapshots_dir) == []
