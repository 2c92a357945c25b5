"""A directory tree a container or a build step wrote, into a tar stream (`docker cp` out
of a container, a build's COPY --from): any depth the image store holds is copied
without recursion, a deeper one is refused naming it (not a RecursionError, not one fd
per level), links are written as links, and `docker cp`'s budget ends the copy."""

from __future__ import annotations

import io
import os
import queue
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent.build.context import ContextError, Source
from dockyard.agent.build.copy_step import CopyPlan, copy_into
from dockyard.agent.build.tree_tar import TreeTar
from dockyard.agent.dockerapi.archive import _Target, _write_tar
from dockyard.agent.images.safe_fs import MAX_DEPTH, UnsafePath
from tests.build.test_upper import _deep, _recursion_limit


def _cp_out(root: Path, target: _Target) -> tarfile.TarFile:
    """What `docker cp CONTAINER:PATH -` streams for ``target`` under ``root``."""
    chunks: queue.Queue[bytes | None] = queue.Queue()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _write_tar(fd, target, chunks)
    finally:
        os.close(fd)
    data = b"".join(iter(chunks.get_nowait, None))
    return tarfile.open(fileobj=io.BytesIO(data))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    yield root
    subprocess.run(["rm", "-rf", "--", str(root)], check=True)


def test_cp_out_copies_as_deep_as_a_layer_holds(tree: Path) -> None:
    _deep(tree, MAX_DEPTH - 1)
    with _recursion_limit(200), _cp_out(tree, _Target((), "d")) as tar:
        names = tar.getnames()
    assert len(names) == MAX_DEPTH
    assert names[-1] == "d/" * (MAX_DEPTH - 1) + "leaf"


def test_cp_out_of_a_too_deep_tree_is_refused_naming_it(tree: Path) -> None:
    """1,200 levels, written by a container: past Python's recursion limit and past an
    agent's fd limit if each level held one open."""
    _deep(tree, 1200)
    with pytest.raises(UnsafePath, match=f"d/d/d.*at most {MAX_DEPTH}"):
        _cp_out(tree, _Target((), "d"))


def test_cp_out_keeps_owners_and_never_follows_links(tree: Path) -> None:
    (tree / "dir").mkdir()
    (tree / "dir" / "file").write_text("data\n")
    os.chown(tree / "dir" / "file", 1000, 1001)
    os.symlink("/etc/shadow", tree / "dir" / "link")
    with _cp_out(tree, _Target((), "dir")) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["dir", "dir/file", "dir/link"]
        assert (members["dir/file"].uid, members["dir/file"].gid) == (1000, 1001)
        assert members["dir/link"].issym() and members["dir/link"].linkname == "/etc/shadow"
        extracted = tar.extractfile("dir/file")
        assert extracted is not None and extracted.read() == b"data\n"


def test_budget_ends_the_copy(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)

    def spend(size: int) -> None:
        if size > 10:
            raise UnsafePath("the copy is larger than 10 bytes")

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with (
            tarfile.open(fileobj=io.BytesIO(), mode="w") as tar,
            pytest.raises(UnsafePath, match="larger than 10 bytes"),
        ):
            TreeTar(tar, spend=spend).add(fd, "big", "big")
    finally:
        os.close(fd)


def test_build_copy_of_a_too_deep_tree_is_refused_naming_it(tmp_path: Path, tree: Path) -> None:
    """COPY --from a stage whose RUN step made 1,200 levels: a build error naming the
    destination and the depth, and nothing is written into the image."""
    _deep(tree, 1200)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    plan = CopyPlan(tree, [Source(("d",), True)], "/deep", True, None, False)
    with pytest.raises(ContextError, match=f"/deep: .*at most {MAX_DEPTH}"):
        copy_into(plan, rootfs, tmp_path)
    assert list(rootfs.iterdir()) == []
