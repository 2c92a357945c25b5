"""Contexts: named endpoints kept in the user's config dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.ports import free_port


def dockyard(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    environment.update({"DOCKYARD_CONFIG": str(config), **(env or {})})
    return subprocess.run(
        [str(BIN / "dockyard"), *args], capture_output=True, text=True, env=environment, timeout=30
    )


def test_create_use_inspect_and_remove(tmp_path: Path) -> None:
    assert (
        dockyard(
            tmp_path,
            "context",
            "create",
            "prod",
            "--host",
            "10.0.0.5:7400",
            "--description",
            "production",
        ).returncode
        == 0
    )
    listed = json.loads(dockyard(tmp_path, "context", "ls", "-o", "json").stdout)
    assert [(c["name"], c["current"]) for c in listed] == [("default", True), ("prod", False)]
    assert dockyard(tmp_path, "context", "use", "prod").returncode == 0
    inspected = json.loads(dockyard(tmp_path, "context", "inspect").stdout)
    assert inspected == [
        {"name": "prod", "host": "10.0.0.5:7400", "description": "production", "tls": {}}
    ]
    assert (tmp_path / "config.yaml").stat().st_mode & 0o077 == 0
    assert dockyard(tmp_path, "context", "rm", "prod").returncode == 0
    listed = json.loads(dockyard(tmp_path, "context", "ls", "-o", "json").stdout)
    assert [(c["name"], c["current"]) for c in listed] == [("default", True)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["context", "create", "x", "--host", "h:99999"], "not a number in 1-65535"),
        (["context", "create", "bad name", "--host", "h"], "invalid name"),
        (["context", "use", "ghost"], "context 'ghost' not found"),
        (["context", "rm", "default"], "cannot be removed"),
        (["--context", "ghost", "node", "ls"], "context 'ghost' not found"),
    ],
)
def test_bad_context_input_is_refused_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = dockyard(tmp_path, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_duplicate_context_needs_overwrite(tmp_path: Path) -> None:
    assert dockyard(tmp_path, "context", "create", "a", "--host", "h1").returncode == 0
    again = dockyard(tmp_path, "context", "create", "a", "--host", "h2")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (
        dockyard(tmp_path, "context", "create", "a", "--host", "h2", "--overwrite").returncode == 0
    )
    inspected = json.loads(dockyard(tmp_path, "context", "inspect", "a").stdout)
    assert inspected[0]["host"] == "h2:7400"


def test_the_context_picks_the_daemon(tmp_path: Path) -> None:
    port = free_port()
    dockyard(tmp_path, "context", "create", "gone", "--host", f"127.0.0.1:{port}", "--use")
    result = dockyard(tmp_path, "node", "ls")
    assert (
        result.stderr.strip()
        == f"dockyard: cannot reach controller at 127.0.0.1:{port}: connection refused"
    )
    other = free_port()
    result = dockyard(tmp_path, "node", "ls", env={"DOCKYARD_HOST": f"127.0.0.1:{other}"})
    assert f"127.0.0.1:{other}" in result.stderr
    result = dockyard(tmp_path, "-H", f"127.0.0.1:{port + 0}", "node", "ls")
    assert f"127.0.0.1:{port}" in result.stderr
