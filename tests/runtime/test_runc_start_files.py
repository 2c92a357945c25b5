"""The files a container's create writes, on real runc: each written once, only the record
through a temporary and a rename, and what a crash between the steps leaves recovers.

The /etc files and config.json are written in place while the container has no record
(recovery discards such a directory whole); ``container.json`` and every later rewrite
(``set_endpoint``) stay atomic.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerSpec, ContainerStatus, NetworkEndpoint
from dockyard.agent.runtime.runc.records import ContainerDir, load_record
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import Env

pytestmark = [pytest.mark.runc, pytest.mark.timeout(60)]

EXTRAS: dict[str, Any] = {
    "hostname": "web",
    "extra_hosts": ["10.9.8.7 db"],
    "dns_servers": ["192.0.2.53"],
    "dns_search": ["example.test"],
}


@pytest.fixture
def replaced() -> Iterator[list[str]]:
    """The names of the files ``os.replace`` renamed over while the test ran."""
    names: list[str] = []
    real: Callable[..., None] = os.replace
    lock = threading.Lock()

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            names.append(Path(dst).name)
        real(src, dst, *args, **kwargs)

    os.replace = spy
    try:
        yield names
    finally:
        os.replace = real


def _etc(env: Env, cid: str) -> dict[str, str]:
    etc = env.state_root / "containers" / cid / "bundle"
    return {name: (etc / name).read_text() for name in ("hosts", "resolv.conf", "hostname")}


def _modes(env: Env, cid: str) -> set[int]:
    etc = env.state_root / "containers" / cid / "bundle"
    return {stat.S_IMODE(os.stat(etc / n).st_mode) for n in ("hosts", "resolv.conf", "hostname")}


def _check_etc(files: dict[str, str]) -> None:
    assert files["hostname"] == "web\n"
    assert files["hosts"].startswith("127.0.0.1\tlocalhost\n")
    assert "127.0.1.1\tweb\n" in files["hosts"]
    assert files["hosts"].endswith("10.9.8.7\tdb\n")
    assert files["resolv.conf"].splitlines()[:2] == ["nameserver 192.0.2.53", "search example.test"]


async def test_a_create_renames_only_its_record(env: Env, replaced: list[str]) -> None:
    info = await env.runtime.create(env.config("true", **EXTRAS))
    # hosts, resolv.conf, hostname and config.json: written once each, in place, in the
    # bundle.
    assert replaced == ["container.json"]
    base = env.state_root / "containers" / info.id
    assert sorted(p.name for p in (base / "bundle").iterdir()) == [
        "config.json",
        "hostname",
        "hosts",
        "resolv.conf",
    ]
    assert not (base / "etc").exists()  # no directory of their own
    await env.runtime.remove(info.id)


async def test_the_record_is_compact_json(env: Env) -> None:
    info = await env.runtime.create(env.config("true"))
    text = (env.state_root / "containers" / info.id / "container.json").read_text()
    assert "\n" not in text and ", " not in text  # the C encoder's compact form
    record = load_record(ContainerDir(env.state_root / "containers" / info.id))
    assert record is not None and record.config.id == info.id
    await env.runtime.remove(info.id)


async def test_etc_files_inside_the_container_and_after_an_agent_restart(env: Env) -> None:
    rt = env.runtime
    info = await rt.create(env.config("sh", "-c", "cat /etc/hosts /etc/resolv.conf", **EXTRAS))
    _check_etc(_etc(env, info.id))
    assert _modes(env, info.id) == {0o644}
    await rt.start(info.id)
    assert (await rt.wait(info.id)).exit_code == 0
    seen = b"".join([r.data async for r in rt.logs(info.id)]).decode()
    assert "10.9.8.7\tdb" in seen and "nameserver 192.0.2.53" in seen
    await rt.close()
    fresh = RuncRuntime(env.state_root, cgroup_parent=env.cgroup_parent)
    env.runtime = fresh
    await fresh.recover()
    await fresh.start(info.id)  # a restart after the agent's: the same files
    assert (await fresh.wait(info.id)).exit_code == 0
    _check_etc(_etc(env, info.id))
    # a later rewrite (the endpoint changed) is atomic and keeps the extras
    endpoint = NetworkEndpoint(netns_path="", ip_address="10.0.0.5")
    await fresh.set_endpoint(info.id, endpoint)
    files = _etc(env, info.id)
    assert "10.0.0.5\tweb\n" in files["hosts"] and files["hosts"].endswith("10.9.8.7\tdb\n")
    assert _modes(env, info.id) == {0o644}
    await fresh.remove(info.id)


async def test_a_create_cut_before_its_record_is_discarded(env: Env) -> None:
    """A crash after the in-place writes (a half-written config.json and hosts file) but
    before the record: the next agent discards the directory, and the id can be reused."""
    rt = env.runtime
    config = env.config("true", **EXTRAS)
    await rt.create(config)
    base = env.state_root / "containers" / config.id
    (base / "container.json").unlink()
    (base / "bundle" / "config.json").write_text('{"ociVersion": "1.')
    (base / "bundle" / "hosts").write_text("127.0.0.1\tloc")
    await rt.close()
    fresh = RuncRuntime(env.state_root, cgroup_parent=env.cgroup_parent)
    env.runtime = fresh
    assert await fresh.recover() == []
    assert not await asyncio.to_thread(base.exists)
    info = await fresh.create(config)
    await fresh.start(info.id)
    assert (await fresh.wait(info.id)).exit_code == 0
    assert (await fresh.inspect(info.id)).state.status is ContainerStatus.EXITED
    _check_etc(_etc(env, info.id))
    await fresh.remove(info.id)


async def test_a_create_in_one_thread_hop_and_its_start_in_one(
    env: Env, thread_hops: list[str]
) -> None:
    info = await env.runtime.create(env.config("true", **EXTRAS))
    # directories, mount, user db, /etc files, config.json and the record: one hop
    assert thread_hops == ["_create_blocking"]
    thread_hops.clear()
    await env.runtime.start(info.id)
    # nothing to prepare after its own create (no runc state, no exit files, mounted);
    # runc's exec fifo removed and the record saved: one hop after the release
    assert thread_hops == ["_released"]
    assert (await env.runtime.wait(info.id)).exit_code == 0
    thread_hops.clear()
    await env.runtime.start(info.id)
    # a restart: runc's leftover probe, the exit files and the mount in one hop first
    assert thread_hops == ["_prepare_start", "_released"]
    assert (await env.runtime.wait(info.id)).exit_code == 0
    await env.runtime.remove(info.id)


async def test_the_callers_record_is_written_in_the_creates_hop_before_the_container(
    env: Env, thread_hops: list[str]
) -> None:
    """The service's record of a new container (its meta file) goes in the runtime's own
    create hop, first: one thread hop for both, and no container without its record."""
    config = env.config("true")
    seen: list[tuple[bool, bool]] = []  # (on the loop's thread, the container's dir made)

    def record() -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        seen.append((on_loop, (env.state_root / "containers" / config.id).exists()))

    info = await env.runtime.create(config, record)
    assert thread_hops == ["_create_blocking"]
    assert seen == [(False, False)]
    await env.runtime.remove(info.id)


async def test_no_directory_is_made_on_the_event_loop(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[str] = []
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(self.name)
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    info = await env.runtime.create(env.config("true"))
    await env.runtime.start(info.id)
    assert (await env.runtime.wait(info.id)).exit_code == 0
    await env.runtime.start(info.id)  # a restart: the directories exist
    assert (await env.runtime.wait(info.id)).exit_code == 0
    assert on_loop == []
    await env.runtime.remove(info.id)


async def test_the_config_is_encoded_once_per_config_object(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[str] = []
    real_to_dict = ContainerSpec.to_dict

    def to_dict(self: ContainerSpec) -> dict[str, Any]:
        encoded.append(self.name)
        return real_to_dict(self)

    monkeypatch.setattr(ContainerSpec, "to_dict", to_dict)
    rt = env.runtime
    info = await rt.create(env.config("true", name="first"))
    await rt.start(info.id)  # a save at the start and one at the exit
    assert (await rt.wait(info.id)).exit_code == 0
    assert encoded == ["first"]
    await rt.rename(info.id, "second")  # a new config object: encoded again
    assert encoded == ["first", "second"]
    cdir = ContainerDir(env.state_root / "containers" / info.id)
    record = load_record(cdir)
    assert record is not None and record.config.name == "second"
    assert record.state.status is ContainerStatus.EXITED and record.state.exit_code == 0
    await rt.remove(info.id)


async def test_a_container_of_an_earlier_agent_keeps_its_etc_directory(env: Env) -> None:
    """Earlier agents kept the /etc files in ``<container>/etc`` and bound them from
    there: a rewrite (``set_endpoint``) goes there, not into the bundle."""
    rt = env.runtime
    info = await rt.create(env.config("cat", "/etc/hosts", **EXTRAS))
    base = env.state_root / "containers" / info.id
    (base / "etc").mkdir()  # the earlier layout: the files and the binds in etc/
    for name in ("hosts", "resolv.conf", "hostname"):
        os.replace(base / "bundle" / name, base / "etc" / name)
    spec_path = base / "bundle" / "config.json"
    spec = spec_path.read_text().replace(f"{base}/bundle/h", f"{base}/etc/h")
    spec_path.write_text(spec.replace(f"{base}/bundle/resolv", f"{base}/etc/resolv"))
    await rt.set_endpoint(info.id, NetworkEndpoint(netns_path="", ip_address="10.0.0.7"))
    assert "10.0.0.7\tweb\n" in (base / "etc" / "hosts").read_text()
    assert not (base / "bundle" / "hosts").exists()
    await rt.start(info.id)
    assert (await rt.wait(info.id)).exit_code == 0
    seen = b"".join([r.data async for r in rt.logs(info.id)]).decode()
    assert "10.0.0.7\tweb" in seen
    await rt.remove(info.id)
