"""Contexts: named endpoints kept in the user's config dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

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


def _tls_context(config: Path, name: str = "local") -> dict[str, str]:
    """A current context with TLS material (the files need not exist: nothing dials)."""
    tls = {
        "ca": str(config / "ca.pem"),
        "cert": str(config / "cert.pem"),
        "key": str(config / "key.pem"),
    }
    from dockyard.common.contexts import ContextStore

    store = ContextStore(config)
    store.create(name, "127.0.0.1:7400", tls=tls)
    store.use(name)
    return tls


@pytest.fixture
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKYARD_CONFIG", str(tmp_path))
    for name in (
        "DOCKYARD_HOST",
        "DOCKYARD_CONTEXT",
        "DOCKYARD_TLS_CACERT",
        "DOCKYARD_TLS_CERT",
        "DOCKYARD_TLS_KEY",
        "DOCKYARD_CERT_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_h_does_not_take_the_current_contexts_tls(
    private_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As docker: -H (or DOCKYARD_HOST) addresses a daemon with the flags' and the
    environment's TLS material only; the current context (which `deploy/quickstart`
    leaves at `local`) is not consulted, so an --insecure daemon is reached in
    plaintext."""
    from dockyard.cli.client import resolve_targets

    _tls_context(private_config)
    [target] = resolve_targets(("127.0.0.1:9",), None)
    assert (target.address, target.origin, target.tls) == ("127.0.0.1:9", "-H", None)
    with monkeypatch.context() as env:
        env.setenv("DOCKYARD_HOST", "127.0.0.1:10")
        [target] = resolve_targets((), None)
    assert (target.address, target.tls) == ("127.0.0.1:10", None)
    # Without -H the current context is used, with its TLS material.
    [target] = resolve_targets((), None)
    assert target.origin == "local" and target.tls is not None


def test_h_with_a_named_context_takes_that_contexts_tls(private_config: Path) -> None:
    """`-c NAME -H AGENT` (or DOCKYARD_CONTEXT=NAME): the named context's identity for
    another daemon of its cluster, e.g. one agent of the local cluster."""
    from dockyard.cli.client import resolve_targets

    tls = _tls_context(private_config)
    [target] = resolve_targets(("127.0.0.1:9",), "local")
    assert target.address == "127.0.0.1:9" and target.tls is not None
    assert (target.tls.ca, target.tls.cert, target.tls.key) == (tls["ca"], tls["cert"], tls["key"])
    result = dockyard(private_config, "-H", "127.0.0.1:9", "-c", "ghost", "info")
    assert result.returncode == 1 and "context 'ghost' not found" in result.stderr


def test_h_takes_the_environments_tls(
    private_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dockyard.cli.client import resolve_targets

    _tls_context(private_config)
    monkeypatch.setenv("DOCKYARD_CERT_PATH", "/certs")
    [target] = resolve_targets(("127.0.0.1:9",), None)
    assert target.tls is not None and target.tls.ca == "/certs/ca.pem"


def test_a_context_names_several_controllers_and_calls_go_to_one_that_answers(
    tmp_path: Path, cluster_factory: Any
) -> None:
    """A context of a cluster's controllers (`--host` repeated): a call goes to the first
    that can be reached, in order; bad or repeated addresses are refused."""
    cluster = cluster_factory(insecure=True)
    cluster.start_controller()
    dead = f"127.0.0.1:{free_port()}"
    created = dockyard(
        tmp_path,
        "context",
        "create",
        "ha",
        "--host",
        dead,
        "--host",
        f"{cluster.address},{dead.replace(':', ':0')}",
        "--use",
    )
    assert created.returncode == 1 and "names one address twice" in created.stderr
    assert (
        dockyard(
            tmp_path, "context", "create", "ha", "--host", dead, "--host", cluster.address, "--use"
        ).returncode
        == 0
    )
    inspected = json.loads(dockyard(tmp_path, "context", "inspect", "ha").stdout)
    assert inspected[0]["host"] == f"{dead},{cluster.address}"
    info = dockyard(tmp_path, "info", "-o", "json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["controller_id"]
    # None answers: the error names the last one tried.
    cluster.stop()
    failed = dockyard(tmp_path, "node", "ls")
    assert failed.returncode == 1
    assert f"cannot reach controller at {cluster.address}" in failed.stderr
