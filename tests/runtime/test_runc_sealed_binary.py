"""runc runs from a sealed in-memory copy the agent makes once (runc 1.1 then skips its
own copy of its binary at every container start): the copy is sealed exactly as runc
requires, containers start and run through it, and without memfd sealing runc is run as
it is."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dockyard.agent.runtime.runc import sealed_binary
from dockyard.agent.runtime.runc.sealed_binary import RUNC_SEALS, seal_binary, seals
from tests.runtime.conftest import Env

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]


async def test_containers_run_through_a_sealed_copy_of_runc(env: Env) -> None:
    runc = env.runtime.runc
    assert Path(runc).name == "runc"
    assert os.readlink(os.readlink(runc)).startswith("/memfd:runc")  # a link to the copy
    assert seals(runc) == RUNC_SEALS  # what runc's is_self_cloned accepts, exactly
    info = await env.runtime.create(env.config("sh", "-c", "exit 3"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 3
    await env.runtime.remove(info.id)
    await env.runtime.close()
    assert env.runtime.runc == shutil.which("runc")  # its copy closed with the runtime


def test_the_copy_is_the_binary_and_cannot_be_written(tmp_path: Path) -> None:
    sealed = seal_binary(str(shutil.which("runc")), tmp_path / "bin")
    assert sealed is not None
    try:
        assert Path(sealed.path).read_bytes() == Path(str(shutil.which("runc"))).read_bytes()
        fd = os.open(sealed.path, os.O_RDWR)
        try:
            with pytest.raises(PermissionError):  # F_SEAL_WRITE: EPERM, also for root
                os.write(fd, b"x")
        finally:
            os.close(fd)
    finally:
        sealed.close()


def test_without_memfd_sealing_runc_runs_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(name: str, flags: int) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(sealed_binary.os, "memfd_create", unsupported)
    assert seal_binary(str(shutil.which("runc")), tmp_path / "bin") is None
