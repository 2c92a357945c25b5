"""Fixtures: a real `docker-registry` (Distribution 2.8) on a free loopback port."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    root: Path
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def auth_file(self, directory: Path) -> Path:
        """A docker config.json holding this registry's credentials."""
        raw = f"{self.username}:{self.password}".encode()
        path = directory / "config.json"
        auths = {self.host: {"auth": base64.b64encode(raw).decode()}}
        path.write_text(json.dumps({"auths": auths}))
        return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401 with auth: it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {url}: {log.read_text()[-2000:]}")


def _start(tmp: Path, htpasswd: str | None = None) -> Iterator[tuple[str, Path]]:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed")
    port = free_port()
    config = (
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if htpasswd is not None:
        (tmp / "htpasswd").write_text(htpasswd)
        config += f"auth:\n  htpasswd:\n    realm: dockyard-test\n    path: {tmp / 'htpasswd'}\n"
    (tmp / "config.yml").write_text(config)
    log = tmp / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(tmp / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield f"127.0.0.1:{port}", tmp
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry on 127.0.0.1, removed at teardown."""
    tmp = tmp_path_factory.mktemp("registry")
    for host, root in _start(tmp):
        yield RegistryServer(host, root)


@pytest.fixture
def mirror_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A second registry, used as a docker.io mirror."""
    tmp = tmp_path_factory.mktemp("mirror")
    for host, root in _start(tmp):
        yield RegistryServer(host, root)


@pytest.fixture
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth (user `dock`, password `yard-secret`)."""
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"yard-secret", bcrypt.gensalt(rounds=5)).decode()
    tmp = tmp_path_factory.mktemp("authregistry")
    for host, root in _start(tmp, f"dock:{hashed.replace('$2b$', '$2y$', 1)}\n"):
        yield RegistryServer(host, root, "dock", "yard-secret")


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()
