"""Files replaced whole (common/atomic_file.py), and the state files written through it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent import identity
from dockyard.agent.certs import NodePKI
from dockyard.common.atomic_file import write_atomic
from dockyard.common.contexts import ContextStore


@pytest.fixture
def umask() -> Iterator[None]:
    """A umask that would loosen (0) any mode not set explicitly."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o444])
def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: None, mode: int) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"x", mode=mode)
    assert _mode(target) == mode
    assert target.read_bytes() == b"x"


def test_the_file_is_replaced_never_rewritten_in_place(tmp_path: Path) -> None:
    """A reader holding the old file (here: a hard link to it) keeps the old content
    whole: the new one is a new inode renamed over the name."""
    target = tmp_path / "f"
    write_atomic(target, b"old")
    os.link(target, tmp_path / "held")
    write_atomic(target, b"new" * 1000)
    assert (tmp_path / "held").read_bytes() == b"old"
    assert target.read_bytes() == b"new" * 1000


def test_a_write_cut_short_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_durable_syncs_the_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "a", b"x")
    assert synced == ["file", "dir"]
    synced.clear()
    write_atomic(tmp_path / "b", b"x", durable=False)
    assert synced == []


def test_the_owner_is_set(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    target = tmp_path / "f"
    write_atomic(target, b"secret", mode=0o400, owner=(4321, 8765))
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 8765, 0o400)


def test_a_missing_parent_is_made_or_refused(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "b" / "f", b"x")
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x", make_parent=False)
    assert not (tmp_path / "missing").exists()


def test_concurrent_writers_do_not_share_a_temporary(tmp_path: Path) -> None:
    """Two temporaries of one target at once (two processes saving the same file): each
    has its own name, so neither truncates or renames the other's."""
    target = tmp_path / "f"
    write_atomic(target, b"1")
    real_replace = os.replace
    seen: list[str] = []

    def nested(source: str | Path, destination: str | Path) -> None:
        seen.append(Path(source).name)
        if len(seen) == 1:
            write_atomic(target, b"second")  # a second writer between write and rename
        real_replace(source, destination)

    os.replace = nested  # type: ignore[assignment]
    try:
        write_atomic(target, b"first")
    finally:
        os.replace = real_replace
    assert len(set(seen)) == 2
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


# -- the state files written through it -------------------------------------------------


def test_a_node_s_certificates_are_replaced_whole(tmp_path: Path) -> None:
    """A re-join (or a renewal) never rewrites ca.pem, node.pem or join.json in place: a
    crash midway would leave a truncated CA and an agent that cannot start."""
    pki = NodePKI.of(tmp_path)
    pki.save(b"CA-1", b"CERT-1", b"KEY-1", ["a:1"])
    held = {p.name: tmp_path / f"held-{p.name}" for p in (pki.ca, pki.cert, pki.joined)}
    for path in (pki.ca, pki.cert, pki.joined):
        os.link(path, held[path.name])
    pki.save(b"CA-2", b"CERT-2", b"KEY-2", ["b:2"])
    assert held["ca.pem"].read_bytes() == b"CA-1"
    assert held["node.pem"].read_bytes() == b"CERT-1"
    assert json.loads(held["join.json"].read_text()) == {"controllers": ["a:1"]}
    assert (pki.ca.read_bytes(), pki.cert.read_bytes()) == (b"CA-2", b"CERT-2")
    assert _mode(pki.key) == 0o600
    assert _leftovers(pki.directory) == []


def test_revocations_and_identity_leave_no_temporary(tmp_path: Path) -> None:
    pki = NodePKI.of(tmp_path)
    pki.directory.mkdir(parents=True)
    pki.save_revoked(frozenset({"0a", "0b"}))
    assert pki.load_revoked() == frozenset({"0a", "0b"})
    made = identity.load_or_create(tmp_path, "n1")
    identity.save(tmp_path, identity.NodeIdentity(made.node_id, "n2"))
    assert identity.load_or_create(tmp_path, "").name == "n2"
    assert _leftovers(pki.directory) == [] and _leftovers(tmp_path) == []


def test_the_cli_contexts_file_is_private_from_its_first_byte(
    tmp_path: Path, umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written 0600 before its data (not chmod-ed after): with umask 0 the file never
    exists world-readable."""
    modes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    store = ContextStore(tmp_path)
    store.create("prod", "10.0.0.1:7000")
    assert modes and set(modes) == {0o600}
    assert _mode(store.path) == 0o600
