"""Build contexts as an attacker writes them: members that would leave the context,
symlinks to lean on, fifos and devices, a Dockerfile that is not a file; and COPY's
cache keys, which two different contexts must never share."""

from __future__ import annotations

import io
import os
import signal
import tarfile
from pathlib import Path

import pytest

from dockyard.agent.build.cache import sources_digest
from dockyard.agent.build.context import (
    ContextError,
    find_sources,
    read_dockerfile,
    unpack_into,
)
from dockyard.agent.build.dockerfile import DockerfileError
from tests.images.test_unpack_hostile import needs_root


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


@pytest.fixture
def alarm() -> object:
    """A test that would hang (a fifo opened) fails after 10 s instead."""

    def expired(*_: object) -> None:
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield None
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@needs_root
@pytest.mark.parametrize(
    "members",
    [
        [(_info("../escape"), b"x")],
        [(_info("/abs"), b"x")],
        [(_info("a/../../escape"), b"x")],
        [(_info("up", tarfile.SYMTYPE, "/tmp"), b""), (_info("up/escape"), b"x")],
        [(_info("fifo", tarfile.FIFOTYPE), b"")],
        [(_info("disk", tarfile.BLKTYPE), b"")],
        [(_info(".wh.file"), b"")],
    ],
)
def test_hostile_members_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    context = tmp_path / "deep" / "context"
    context.mkdir(parents=True)
    tar = _tar(tmp_path / "context.tar", members)
    with pytest.raises(ContextError):
        unpack_into(tar, context)
    assert not (tmp_path / "deep" / "escape").exists()
    assert not Path("/tmp/escape").exists()


def test_dockerfile_must_be_a_regular_file_in_the_context(tmp_path: Path, alarm: object) -> None:
    os.mkfifo(tmp_path / "Dockerfile")
    with pytest.raises(DockerfileError, match="not a regular file"):
        read_dockerfile(tmp_path, "Dockerfile")
    (tmp_path / "real").write_text("FROM busybox\n")
    os.symlink("/etc/passwd", tmp_path / "linked")
    with pytest.raises(DockerfileError):
        read_dockerfile(tmp_path, "linked")
    with pytest.raises(DockerfileError):
        read_dockerfile(tmp_path, "../real")
    assert read_dockerfile(tmp_path, "real") == "FROM busybox\n"


def test_sources_are_walked_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("a")
    os.symlink("/etc", tmp_path / "dir" / "etc")
    found = find_sources(tmp_path, "dir/*")
    assert sorted(s.parts for s in found) == [("dir", "a.txt"), ("dir", "etc")]
    with pytest.raises(ContextError):
        find_sources(tmp_path, "dir/etc/passwd")
    with pytest.raises(ContextError):
        find_sources(tmp_path, "dir/etc/*")


def test_cache_digests_of_different_contexts_differ(tmp_path: Path) -> None:
    """Two files `a`=1 and `b`=2 against one file `a` holding what a naive
    concatenation of both would: the digests differ (no cache shared)."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    (two / "a").write_bytes(b"1")
    (two / "b").write_bytes(b"2")
    os.chmod(two / "b", 0o644)
    (one / "a").write_bytes(b"1" + b"b\x00100644\x00" + b"2")
    assert sources_digest(two, find_sources(two, "*")) != sources_digest(
        one, find_sources(one, "*")
    )
    same = tmp_path / "same"
    same.mkdir()
    (same / "a").write_bytes(b"1")
    (same / "b").write_bytes(b"2")
    os.chmod(same / "b", 0o644)
    os.chmod(same / "a", os.stat(two / "a").st_mode & 0o7777)
    assert sources_digest(two, find_sources(two, "*")) == sources_digest(
        same, find_sources(same, "*")
    )
