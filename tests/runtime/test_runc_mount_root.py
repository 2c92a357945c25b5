"""The runtime's state root is a private mount of its own: the containers' rootfs mounts
stay out of the host's other mount namespaces, also where the host's ``/`` is shared
(systemd), and an agent restart never stacks a second bind."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.agent.runtime.base import ContainerSpec, ContainerStatus
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


def _mountinfo(pid: str = "self") -> list[list[str]]:
    return [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]


def propagation(fields: list[str]) -> str:
    optional = fields[6 : fields.index("-")]
    if any(tag.startswith("shared:") for tag in optional):
        return "shared"
    return "slave" if any(tag.startswith("master:") for tag in optional) else "private"


def _at(path: Path, pid: str = "self") -> list[list[str]]:
    return [fields for fields in _mountinfo(pid) if fields[4] == str(path)]


class SharedHost:
    """A shared mount (as systemd makes ``/``) holding the state root, and a process in
    another mount namespace that is its peer (``unshare -m`` keeps the propagation)."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.state = top / "state"
        self.cgroup_parent = f"dockyard-test-{uuid.uuid4().hex[:8]}"
        self.peer: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SharedHost:
        self.top.mkdir()
        subprocess.run(["mount", "--bind", str(self.top), str(self.top)], check=True)
        subprocess.run(["mount", "--make-shared", str(self.top)], check=True)
        self.peer = subprocess.Popen(
            ["unshare", "-m", "--propagation", "unchanged", "sleep", "600"]
        )
        return self

    def peer_sees(self, path: Path) -> bool:
        assert self.peer is not None
        return any(fields[4] == str(path) for fields in _mountinfo(str(self.peer.pid)))

    def __exit__(self, *exc: object) -> None:
        if self.peer is not None:
            self.peer.kill()
            self.peer.wait()
        cleanup_everything(self.state, self.cgroup_parent)
        subprocess.run(["umount", "-l", str(self.top)], capture_output=True, check=False)


@pytest.fixture
def shared_host(tmp_path: Path) -> Iterator[SharedHost]:
    with SharedHost(tmp_path / "shared") as host:
        yield host


def _config(layer: Path, *command: str) -> ContainerSpec:
    cid = f"t{uuid.uuid4().hex[:16]}"
    return ContainerSpec(
        id=cid, name=cid, image="busybox-test", lower_dirs=[layer], command=list(command)
    )


async def test_rootfs_mounts_do_not_reach_a_peer_namespace(
    shared_host: SharedHost, busybox_layer: Path
) -> None:
    runtime = RuncRuntime(shared_host.state, cgroup_parent=shared_host.cgroup_parent)
    await runtime.recover()
    try:
        (root,) = _at(shared_host.state)
        assert propagation(root) == "private"
        info = await runtime.create(_config(busybox_layer, "true"))
        rootfs = shared_host.state / "containers" / info.id / "rootfs"
        assert _at(rootfs), "the rootfs is mounted in the agent's namespace"
        assert not shared_host.peer_sees(rootfs)
        await runtime.start(info.id)
        assert (await runtime.wait(info.id)).exit_code == 0
        await runtime.remove(info.id)
    finally:
        await runtime.close()
    assert not _at(shared_host.state), "an idle runtime's close undoes its bind"


async def test_a_restart_keeps_one_private_bind_and_the_running_container(
    shared_host: SharedHost, busybox_layer: Path
) -> None:
    runtime = RuncRuntime(shared_host.state, cgroup_parent=shared_host.cgroup_parent)
    await runtime.recover()
    info = await runtime.create(_config(busybox_layer, "sleep", "600"))
    await runtime.start(info.id)
    await runtime.close()  # the agent stops; its container runs on
    assert len(_at(shared_host.state)) == 1, "kept: a rootfs is mounted below it"
    rootfs = shared_host.state / "containers" / info.id / "rootfs"
    for _ in range(2):
        again = RuncRuntime(shared_host.state, cgroup_parent=shared_host.cgroup_parent)
        await again.recover()
        try:
            (root,) = _at(shared_host.state)
            assert propagation(root) == "private"
            assert (await again.inspect(info.id)).state.status is ContainerStatus.RUNNING
            assert _at(rootfs) and (rootfs / "bin" / "busybox").exists()
            assert not shared_host.peer_sees(rootfs)
        finally:
            await again.close()
    last = RuncRuntime(shared_host.state, cgroup_parent=shared_host.cgroup_parent)
    await last.recover()
    try:
        await last.remove(info.id, force=True)
        assert not _at(rootfs)
    finally:
        await last.close()
    assert not _at(shared_host.state)
