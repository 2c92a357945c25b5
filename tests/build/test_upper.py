"""A container's overlayfs upper dir as a layer: deletions (0/0 character devices) become
`.wh.NAME`, an opaque directory `.wh..wh..opq`, hard links stay links, symlinks are
never followed, and the runtime's mount points (/etc/hosts...) are left out. A tree of
any depth is walked without recursion; one deeper than a layer may hold is refused."""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent.build.upper import UnsupportedUpper, layer_from_upper
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.safe_fs import MAX_DEPTH
from tests.images.test_unpack_hostile import needs_root


@needs_root
def test_upper_dir_to_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "hosts").write_text("")
    (upper / "etc" / "resolv.conf").write_text("")
    (upper / "etc" / "app.conf").write_text("conf\n")
    os.mknod(upper / "etc" / "group", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq" / "new").write_text("new\n")
    (upper / "file").write_text("data\n")
    os.link(upper / "file", upper / "hard")
    os.symlink("/etc/shadow", upper / "link")
    os.chown(upper / "file", 1000, 1001)

    blobs = BlobStore(tmp_path / "store")
    layer = layer_from_upper(blobs, upper)

    with gzip.open(blobs.path(layer.digest)) as raw, tarfile.open(fileobj=raw) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["etc/app.conf"]).read() == b"conf\n"  # type: ignore[union-attr]
    assert set(members) == {
        "etc",
        "etc/app.conf",
        "etc/.wh.group",
        "opq",
        "opq/.wh..wh..opq",
        "opq/new",
        "file",
        "hard",
        "link",
    }
    assert members["etc/.wh.group"].isreg() and members["etc/.wh.group"].size == 0
    assert (members["file"].uid, members["file"].gid) == (1000, 1001)
    assert members["hard"].islnk() and members["hard"].linkname == "file"
    assert members["link"].issym() and members["link"].linkname == "/etc/shadow"
    assert layer.diff_id.startswith("sha256:")


@needs_root
def test_metacopy_upper_is_refused(tmp_path: Path) -> None:
    """A metacopy file's data is in a lower layer: committing the empty upper file
    would lose it, so the commit is refused."""
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "chowned").write_text("")
    os.setxattr(upper / "chowned", "trusted.overlay.metacopy", b"")
    with pytest.raises(UnsupportedUpper, match="metacopy"):
        layer_from_upper(BlobStore(tmp_path / "store"), upper)


def _deep(top: Path, levels: int) -> Path:
    """`levels` nested directories `d/d/...` under `top`, made one openat at a time."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return top


@needs_root
def test_deep_tree_within_the_limit(tmp_path: Path) -> None:
    """As deep as a layer may be (the unpacker's MAX_DEPTH): every level is in the layer,
    in order, whatever Python's recursion limit."""
    upper = tmp_path / "upper"
    upper.mkdir()
    _deep(upper, MAX_DEPTH - 1)
    blobs = BlobStore(tmp_path / "store")
    try:
        with _recursion_limit(200):
            layer = layer_from_upper(blobs, upper)
    finally:
        subprocess.run(["rm", "-rf", "--", str(upper)], check=True)
    with gzip.open(blobs.path(layer.digest)) as raw, tarfile.open(fileobj=raw) as tar:
        names = tar.getnames()
    assert len(names) == MAX_DEPTH
    assert names[-1] == "d/" * (MAX_DEPTH - 1) + "leaf"


@needs_root
def test_too_deep_tree_is_refused_naming_it(tmp_path: Path) -> None:
    """1200 levels (past Python's recursion limit, past what a layer may hold): a clear
    error naming the path and the limit, not a RecursionError."""
    upper = tmp_path / "upper"
    upper.mkdir()
    try:
        _deep(upper, 1200)
        with pytest.raises(UnsupportedUpper, match=f"d/d/d.*at most {MAX_DEPTH}"):
            layer_from_upper(BlobStore(tmp_path / "store"), upper)
    finally:  # rm's fts: shutil.rmtree (pytest's cleanup) recurses and fails on it
        subprocess.run(["rm", "-rf", "--", str(upper)], check=True)


@contextlib.contextmanager
def _recursion_limit(limit: int) -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)
