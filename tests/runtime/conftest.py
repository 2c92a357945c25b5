"""Fixtures for the runc runtime tests: a busybox rootfs and a runtime that cleans up."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dockyard.agent.runtime.base import ContainerConfig
from dockyard.agent.runtime.runc.runtime import RuncRuntime

BUSYBOX = Path("/bin/busybox")


def _have_runc() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("runc") is not None
        and shutil.which("conmon") is not None
        and BUSYBOX.exists()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_runc():
        return
    skip = pytest.mark.skip(reason="needs root, runc, conmon and /bin/busybox")
    for item in items:
        if "runc" in item.keywords:
            item.add_marker(skip)


def make_busybox_rootfs(root: Path) -> Path:
    """A lower dir: /bin/busybox + applet links, /etc/passwd and group, /tmp."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    (root / "root").mkdir()
    return root


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("layers") / "busybox")


class Env:
    """What a test needs: the runtime, its lower dir, and a config factory."""

    def __init__(self, runtime: RuncRuntime, layer: Path, state_root: Path, cg: str) -> None:
        self.runtime = runtime
        self.layer = layer
        self.state_root = state_root
        self.cgroup_parent = cg

    def config(self, *command: str, **kwargs: object) -> ContainerConfig:
        cid = str(kwargs.pop("id", f"t{uuid.uuid4().hex[:16]}"))
        return ContainerConfig(
            id=cid,
            name=str(kwargs.pop("name", cid)),
            image="busybox-test",
            lower_dirs=[self.layer],
            image_config={"Cmd": ["sh"], "Env": ["IMAGE_VAR=1"]},
            command=list(command) if command else None,
            **kwargs,  # type: ignore[arg-type]
        )


def cleanup_everything(state_root: Path, cgroup_parent: str) -> None:
    """Kill and delete every container of this runc root, unmount, remove cgroups."""
    runc_root = state_root / "runc"
    if runc_root.is_dir():
        for entry in runc_root.iterdir():
            if entry.is_dir():
                subprocess.run(["runc", "--root", str(runc_root), "kill", entry.name, "KILL"],
                               capture_output=True, check=False)  # fmt: skip
                subprocess.run(["runc", "--root", str(runc_root), "delete", "-f", entry.name],
                               capture_output=True, check=False)  # fmt: skip
    # conmon processes of this state root
    for pid_file in state_root.glob("containers/*/conmon.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"conmon" in cmd and str(state_root).encode() in cmd:
                os.kill(pid, 9)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split()[4] for line in f]
    for mount in sorted((m for m in mounts if m.startswith(str(state_root))),
                        key=len, reverse=True):  # fmt: skip
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    for controller in Path("/sys/fs/cgroup").iterdir():
        cg = controller / cgroup_parent
        if cg.is_dir():
            for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "state"
    cg = f"dockyard-test-{uuid.uuid4().hex[:8]}"
    try:
        yield root, cg
    finally:
        cleanup_everything(root, cg)


@pytest.fixture
async def env(state_root: tuple[Path, str], busybox_layer: Path) -> AsyncIterator[Env]:
    root, cg = state_root
    runtime = RuncRuntime(root, cgroup_parent=cg)
    await runtime.recover()
    yield Env(runtime, busybox_layer, root, cg)
    await runtime.close()
