"""A one-run container's writable layer (``--rm``, ``Containers.Run``) is an overlay the
kernel never syncs (``volatile``): its unmount after the exit does not wait for every
other writer's dirty data on the filesystem. A container that lives on keeps the synced
mount, and a one-run container mounted again (a start after an agent restart) mounts.
"""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path

import pytest

from dockyard.agent.runtime.runc import rootfs
from dockyard.agent.runtime.runc.rootfs import VOLATILE_MARKER, ContainerLayer, is_mounted
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import Env

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


def _mount_options(target: Path) -> set[str]:
    """The superblock options of the mount at ``target`` (after mountinfo's `` - ``)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return set(fields[fields.index("-") + 3].split(","))
    raise AssertionError(f"{target} is not mounted")


async def test_a_one_run_containers_layer_is_volatile_and_a_kept_ones_is_not(env: Env) -> None:
    one_run = await env.runtime.create(dataclasses.replace(env.config("true"), ephemeral=True))
    kept = await env.runtime.create(env.config("true"))
    try:
        containers = env.state_root / "containers"
        assert "fsync=volatile" in _mount_options(containers / one_run.id / "rootfs")
        assert "fsync=volatile" not in _mount_options(containers / kept.id / "rootfs")
        await env.runtime.start(one_run.id)
        assert (await env.runtime.wait(one_run.id)).exit_code == 0
        assert not is_mounted(containers / one_run.id / "rootfs")  # the exit unmounted it
    finally:
        await env.runtime.remove(one_run.id)
        await env.runtime.remove(kept.id)


async def test_a_one_run_container_mounted_again_starts(env: Env) -> None:
    """Its create's mount gone (as after a host crash, the agent started again): the
    kernel's marker of the earlier volatile mount would refuse the next one; the start
    clears it and runs."""
    info = await env.runtime.create(
        dataclasses.replace(env.config("sh", "-c", "echo ran >/out"), ephemeral=True)
    )
    base = env.state_root / "containers" / info.id
    try:
        assert (base / "work" / VOLATILE_MARKER).is_dir()
        await env.runtime.close()
        ContainerLayer(env.config("true").lower_dirs, base).unmount_blocking()
        env.runtime = RuncRuntime(env.state_root, cgroup_parent=env.cgroup_parent)
        await env.runtime.recover()
        await env.runtime.start(info.id)
        assert (await env.runtime.wait(info.id)).exit_code == 0
        assert (base / "upper" / "out").read_text() == "ran\n"
    finally:
        await env.runtime.remove(info.id)


def test_a_kernel_without_volatile_mounts_plainly(
    overlay_layer: ContainerLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel before 5.10 refuses the option (EINVAL): the layer is mounted without it,
    and later mounts do not ask again."""
    asked: list[str] = []
    real = rootfs._mount

    def before_5_10(target: Path, options: str) -> int:
        asked.append(options.rsplit(",", 1)[-1])
        if options.endswith(",volatile"):
            ctypes.set_errno(22)  # EINVAL
            return -1
        return real(target, options)

    monkeypatch.setattr(rootfs, "_mount", before_5_10)
    monkeypatch.setattr(rootfs._volatile, "supported", True)
    layer = ContainerLayer(overlay_layer.lower_dirs, overlay_layer.target.parent, volatile=True)
    try:
        layer.mount_blocking()
        assert is_mounted(layer.target)
        assert "fsync=volatile" not in _mount_options(layer.target)
        layer.unmount_blocking()
        layer.mount_blocking()
        assert asked == ["volatile", f"workdir={layer.work}", f"workdir={layer.work}"]
    finally:
        layer.unmount_blocking()
