from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.images.progress import ProgressEvent, Status
from dockyard.agent.images.service import ImageService
from dockyard.common.distribution.registry import RegistryConfig

BUILD = [sys.executable, "-m", "dockyard.agent.images.build"]


def run_build(*args: str) -> str:
    done = subprocess.run([*BUILD, *args], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cli_help() -> None:
    out = run_build("--help")
    assert "busybox" in out and "--push" in out and "--output" in out


async def test_cli_busybox_tarball_loads(tmp_path: Path) -> None:
    out = tmp_path / "busybox.tar"
    digest = run_build("busybox", "--output", str(out))
    service = ImageService(tmp_path / "store")
    (image,) = await service.load(out)
    assert image.digest == digest
    assert image.references == ("docker.io/library/busybox:latest",)
    assert image.config.cmd == ["sh"]
    (root,) = service.lower_dirs(image)
    assert (root / "etc" / "passwd").read_text().splitlines()[1].startswith("nobody:x:65534:")
    assert (root / "bin" / "sh").readlink() == Path("/bin/busybox")
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_cli_into_store(tmp_path: Path) -> None:
    digest = run_build(
        "big", "--layers", "3", "--layer-size", "64K", "--tag", "big:3", "--store", str(tmp_path)
    )
    image = ImageService(tmp_path).resolve("big:3")
    assert image.digest == digest and len(image.layers) == 3


@pytest.mark.registry
async def test_cli_push_then_pull_big_image(registry: Any, tmp_path: Path) -> None:
    ref = f"{registry.host}/bench/big:5x2m"
    digest = run_build("big", "--layers", "5", "--layer-size", "2M", "--tag", ref, "--push")
    service = ImageService(tmp_path, RegistryConfig())
    events: list[ProgressEvent] = []
    started = time.monotonic()
    image = await service.pull(ref, events.append)
    assert time.monotonic() - started < 30
    assert image.digest == digest and len(image.layers) == 5
    assert sum(1 for e in events if e.status == Status.DONE) == 5
    assert any(e.status == Status.DOWNLOADING and e.current > 0 for e in events)
