"""`dockyard version` with no daemon answering, and `dockyard --version`."""

from __future__ import annotations

import json
import os
import subprocess

from dockyard.common.version import API_VERSION, package_version
from tests.conftest import BIN
from tests.ports import free_port


def dockyard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    return subprocess.run(
        [str(BIN / "dockyard"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_version_prints_the_client_block_when_no_daemon_answers() -> None:
    closed = f"127.0.0.1:{free_port()}"
    result = dockyard("-H", closed, "version")
    assert result.returncode == 1
    assert [line.split(":", 1)[0].strip() for line in result.stdout.splitlines()] == [
        "Client",
        "Version",
        "API version",
    ]
    assert package_version() in result.stdout and API_VERSION in result.stdout
    assert f"cannot reach daemon at {closed}: connection refused" in result.stderr
    data = json.loads(dockyard("-H", closed, "version", "-o", "json").stdout)
    assert data == {
        "client": {
            "component": "dockyard",
            "version": package_version(),
            "api_version": API_VERSION,
        },
        "servers": [],
    }


def test_dash_dash_version_asks_no_daemon() -> None:
    result = dockyard("-H", f"127.0.0.1:{free_port()}", "--version")
    assert result.returncode == 0
    assert result.stdout == f"dockyard version {package_version()}, API {API_VERSION}\n"
