"""The work a container's create and start do besides runc's, on real runc: what is
known is not probed again. A start after its create finds the create's mount without
making or checking a directory, a first start clears no exit files (no conmon ever
wrote there), and an image's passwd and group are read once per runtime.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerStatus
from dockyard.agent.runtime.runc import files
from dockyard.agent.runtime.runc.records import ContainerDir, load_record
from dockyard.agent.runtime.runc.rootfs import ContainerLayer, is_mounted
from tests.runtime.conftest import Env, make_busybox_rootfs

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


class MkdirSpy:
    """The names of the directories ``os.mkdir`` and ``Path.mkdir`` were asked to make
    (made or not) while ``on`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        self.on = False
        lock = threading.Lock()
        real_os: Callable[..., None] = os.mkdir
        real_path = Path.mkdir

        def os_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if self.on:
                with lock:
                    self.names.append(Path(path).name)
            real_os(path, *args, **kwargs)

        def path_mkdir(path: Path, *args: Any, **kwargs: Any) -> None:
            if self.on:
                with lock:
                    self.names.append(f"{path.name} (Path)")
            self.on, was = False, self.on  # Path.mkdir calls os.mkdir: counted once
            try:
                real_path(path, *args, **kwargs)
            finally:
                self.on = was

        monkeypatch.setattr(os, "mkdir", os_mkdir)
        monkeypatch.setattr(Path, "mkdir", path_mkdir)


async def test_a_start_after_its_create_makes_no_directory(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = MkdirSpy(monkeypatch)
    info = await env.runtime.create(env.config("true"))
    spy.on = True
    await env.runtime.start(info.id)
    spy.on = False
    # the create's overlay is found mounted: no upper, work or rootfs probed again;
    # conmon writes its exit code, OOM marker and attach socket in the bundle
    assert spy.names == []
    assert (await env.runtime.wait(info.id)).exit_code == 0
    await env.runtime.remove(info.id)


async def test_a_restart_mounts_the_rootfs_again_after_the_exit(env: Env) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "cat /kept 2>/dev/null; echo x >/kept"))
    rootfs = env.state_root / "containers" / info.id / "rootfs"
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    assert not is_mounted(rootfs)  # the exit unmounted it
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    assert (env.state_root / "containers" / info.id / "upper" / "kept").read_text() == "x\n"
    await env.runtime.remove(info.id)


def _uid(env: Env, cid: str) -> int:
    spec = json.loads((env.state_root / "containers" / cid / "bundle" / "config.json").read_text())
    return int(spec["process"]["user"]["uid"])


async def test_an_images_users_are_read_once(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    read: list[str] = []
    real = files.read_user_db

    def spy(rootfs: Path) -> tuple[str, str]:
        read.append(rootfs.parent.name)
        return real(rootfs)

    monkeypatch.setattr(files, "read_user_db", spy)
    first = await env.runtime.create(env.config("true", user="nobody"))
    second = await env.runtime.create(env.config("true", user="nobody"))
    assert read == [first.id]
    assert _uid(env, first.id) == _uid(env, second.id) == 65534
    # another image (other lower dirs) has users of its own
    other = make_busybox_rootfs(tmp_path / "other")
    (other / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nnobody:x:99:99::/:/bin/sh\n")
    config = dataclasses.replace(env.config("true", user="nobody"), lower_dirs=[other])
    third = await env.runtime.create(config)
    assert read == [first.id, third.id]
    assert _uid(env, third.id) == 99
    for info in (first, second, third):
        await env.runtime.remove(info.id)


def test_the_users_of_a_bounded_number_of_images_are_kept(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    kept = files.UserDbs(kept=3)
    for i in range(5):
        assert kept.read([Path(f"/layers/{i}")], rootfs)[0] == "root:x:0:0::/root:/bin/sh\n"
    assert len(kept) == 3
    assert (Path("/layers/1"),) not in kept  # the oldest went first
    assert (Path("/layers/4"),) in kept
    (rootfs / "etc" / "passwd").write_text("changed\n")
    assert kept.read([Path("/layers/4")], rootfs)[0] == "root:x:0:0::/root:/bin/sh\n"


def test_is_mounted(overlay_layer: ContainerLayer, tmp_path: Path) -> None:
    overlay_layer.mount_blocking()
    target = overlay_layer.target
    assert is_mounted(target)
    assert is_mounted(Path("/"))  # the same inode as its parent
    assert not is_mounted(overlay_layer.upper)  # a plain directory
    assert not is_mounted(tmp_path / "missing")
    assert not is_mounted(overlay_layer.lower_dirs[0] / "out")  # a file
    link = tmp_path / "link"
    link.symlink_to(target)
    assert not is_mounted(link)  # a symlink is no mount point
    parent_link = tmp_path / "parent-link"
    parent_link.symlink_to(target.parent)
    assert is_mounted(parent_link / "rootfs")  # reached through a symlinked parent
    assert not is_mounted(parent_link / "upper")
    overlay_layer.unmount_blocking()
    assert not is_mounted(target)


async def test_an_exit_is_recorded_in_one_thread_hop_and_a_remove_in_one(
    env: Env, thread_hops: list[str]
) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "sleep 0.3; exit 4"))
    await env.runtime.start(info.id)
    thread_hops.clear()
    assert (await env.runtime.wait(info.id)).exit_code == 4
    # exit code, cgroups, runc's state, unmount and the record saved: one hop
    assert thread_hops == ["_exit_cleanup"]
    record = load_record(ContainerDir(env.state_root / "containers" / info.id))
    assert record is not None
    assert (record.state.status, record.state.exit_code, record.state.pid) == (
        ContainerStatus.EXITED,
        4,
        0,
    )
    assert record.state.finished_at is not None
    thread_hops.clear()
    await env.runtime.remove(info.id)
    # runc's leftover probe, cgroups, unmounts and the move to the trash: one hop (the
    # trash is emptied in the background)
    assert thread_hops[:1] == ["<lambda>"]
    assert len(thread_hops) <= 2  # and the trash's removal, in the background
    assert not (env.state_root / "containers" / info.id).exists()


async def test_a_remove_deletes_what_runc_still_has_first(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runc's state of the container left (a crash's): ``runc kill`` and ``runc delete``
    before the directory goes."""
    info = await env.runtime.create(env.config("true"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    leftover = env.state_root / "runc" / info.id
    leftover.mkdir()
    asked: list[tuple[str, ...]] = []

    async def runc(*args: str, check: bool = True) -> tuple[int, str]:
        asked.append(args)
        if args[0] == "delete":
            leftover.rmdir()
        return 0, ""

    monkeypatch.setattr(env.runtime, "_runc", runc)
    await env.runtime.remove(info.id)
    assert asked == [("kill", info.id, "KILL"), ("delete", info.id)]
    assert not (env.state_root / "containers" / info.id).exists()


async def test_conmon_writes_its_exit_code_in_the_bundle(env: Env) -> None:
    info = await env.runtime.create(env.config("sh", "-c", "exit 5"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 5
    cdir = ContainerDir(env.state_root / "containers" / info.id)
    assert cdir.bundle.joinpath("exit").read_text() == "5"
    # no etc/, exit/, persist/ or sock/ directory; no symlink to the bundle for the socket
    assert sorted(p.name for p in cdir.base.iterdir() if p.is_dir()) == [
        "bundle",
        "rootfs",
        "upper",
        "work",
    ]
    await env.runtime.remove(info.id)


@pytest.mark.parametrize("where", ["exit-dir", "persist"])
def test_an_earlier_agents_exit_files_are_read_and_cleared(tmp_path: Path, where: str) -> None:
    """A container started by an earlier agent: its conmon writes exit/<id> and
    persist/exit (and persist/oom) while this agent runs."""
    cdir = ContainerDir(tmp_path / "c1")
    cdir.bundle.mkdir(parents=True)
    cdir.exit_dir.mkdir()
    cdir.persist.mkdir()
    path = cdir.exit_dir / "c1" if where == "exit-dir" else cdir.persist / "exit"
    path.write_text("137")
    (cdir.persist / "oom").write_text("")
    code, finished, oom = files.read_exit(cdir, "c1")
    assert (code, oom) == (137, True) and finished is not None
    files.clear_exit_files(cdir, "c1")
    assert files.read_exit(cdir, "c1") == (None, None, False)
