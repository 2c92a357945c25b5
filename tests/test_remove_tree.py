"""A tree a container wrote is removed however deep (shutil.rmtree recurses and leaves
a tree deeper than Python's recursion limit on disk), never through a symlink and
never into a mount left inside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dockyard.agent.containers.volumes import VolumeStore
from dockyard.common.remove_tree import remove_tree
from tests.images.test_unpack_hostile import needs_root


def _deep(top: Path, levels: int) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(levels):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open(f"f{index % 3}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.symlink("/", "to-root", dir_fd=fd)
    finally:
        os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    victim = tmp_path / "keep"
    victim.mkdir()
    (victim / "file").write_text("kept\n")
    top = tmp_path / "trash"
    top.mkdir()
    (top / "wide").mkdir()
    for index in range(50):
        (top / "wide" / f"sub{index}").mkdir()
        (top / "wide" / f"sub{index}" / "x").write_text("x")
    os.symlink(victim, top / "link")  # a link is removed, never followed
    try:
        _deep(top, 1200)
        remove_tree(top)
        assert not top.exists()
        assert (victim / "file").read_text() == "kept\n"
    finally:
        subprocess.run(["rm", "-rf", "--", str(top)], check=True)


def test_a_file_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    remove_tree(tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_a_mount_inside_is_not_emptied(tmp_path: Path) -> None:
    top = tmp_path / "trash"
    (top / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(top / "mnt")], check=True)
    try:
        (top / "mnt" / "precious").write_text("x")
        remove_tree(top)
        assert (top / "mnt" / "precious").exists()
    finally:
        subprocess.run(["umount", str(top / "mnt")], check=True)
    remove_tree(top)
    assert not top.exists()


@pytest.mark.parametrize("levels", [1, 2, 5])
def test_shallow_trees(tmp_path: Path, levels: int) -> None:
    top = tmp_path / "t"
    top.mkdir()
    _deep(top, levels)
    remove_tree(top)
    assert not top.exists()


def test_a_deep_volume_is_removed(tmp_path: Path) -> None:
    """`docker volume rm` of a volume a container filled with a deep tree: all gone."""
    store = VolumeStore(tmp_path / "volumes")
    volume = store.create("deep")
    try:
        _deep(volume.mountpoint, 1200)
        store.remove("deep")
        assert list((tmp_path / "volumes").iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", "--", str(tmp_path / "volumes")], check=True)
