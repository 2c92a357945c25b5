"""A COPY/ADD destination is resolved inside the image's root as Docker resolves it:
symlinks followed (usr-merged `/bin -> usr/bin`), but an absolute target or a `..`
never leaves the root, and a loop of links is an error, not a hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dockyard.agent.build.in_root import MAX_LINKS, resolve_in_root
from dockyard.agent.images.safe_fs import UnsafePath


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib").mkdir()
    (root / "etc").mkdir()
    os.symlink("usr/bin", root / "bin")  # relative, as Debian 12's
    os.symlink("/usr/lib", root / "lib")  # absolute: the image's root, not the host's
    os.symlink("/../../../../etc", root / "evil")
    os.symlink("../../../../../etc", root / "usr" / "up")
    os.symlink("/etc", root / "usr" / "abs")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    return root


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/bin/x", "/usr/bin/x"),
        ("/bin", "/usr/bin"),
        ("/lib/app/sub", "/usr/lib/app/sub"),  # missing parts taken as written
        ("/evil/x", "/etc/x"),  # an absolute target restarts at the image's root
        ("/usr/up/passwd", "/etc/passwd"),  # `..` stops at the root
        ("/usr/abs/passwd", "/etc/passwd"),
        ("/missing/../bin/x", "/usr/bin/x"),
        ("/", "/"),
        ("/usr/bin/tool", "/usr/bin/tool"),
    ],
)
def test_resolved_inside_the_root(rootfs: Path, path: str, resolved: str) -> None:
    assert resolve_in_root(rootfs, path) == resolved


def test_a_symlink_loop_is_refused(rootfs: Path) -> None:
    with pytest.raises(UnsafePath, match=f"more than {MAX_LINKS} symlinks"):
        resolve_in_root(rootfs, "/loop1/x")
