"""A build's scratch directory is never removed through a mount left in it; after an
agent restart its overlays are unmounted first, then it goes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dockyard.agent.build.builder import remove_scratch
from dockyard.agent.runtime.runc.rootfs import ContainerLayer
from tests.images.test_unpack_hostile import needs_root


@needs_root
def test_scratch_with_a_mount(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "precious").write_text("keep me\n")
    scratch = tmp_path / "build-x"
    layer = ContainerLayer([lower], scratch / "mount-1")
    asyncio.run(layer.mount())
    try:
        remove_scratch(scratch)  # a mount inside: kept, nothing removed through it
        assert os.path.ismount(layer.target)
        assert (layer.target / "precious").exists()  # nothing deleted through the mount
        remove_scratch(scratch, unmount=True)
        assert not scratch.exists()
        assert (lower / "precious").read_text() == "keep me\n"
    finally:
        if os.path.ismount(layer.target):
            layer.unmount_blocking()
