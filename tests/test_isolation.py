"""The test session never reads or writes the user's own configuration: the root
conftest gives it a private HOME, XDG_CONFIG_HOME and DOCKYARD_CONFIG."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent


def _real_home() -> Path:
    return Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()


def test_the_session_has_a_private_home_and_config() -> None:
    real = _real_home()
    for name in ("HOME", "XDG_CONFIG_HOME", "DOCKYARD_CONFIG"):
        value = Path(os.environ[name]).resolve()
        assert not value.is_relative_to(real), f"{name}={value} is under {real}"
    for name in (
        "DOCKYARD_HOST",
        "DOCKYARD_CONTEXT",
        "DOCKYARD_CERT_PATH",
        "DOCKYARD_TLS_CACERT",
        "DOCKYARD_TLS_CERT",
        "DOCKYARD_TLS_KEY",
    ):
        assert name not in os.environ, name


def test_the_cli_in_process_and_in_a_subprocess_reads_the_private_config() -> None:
    """What the CLI flag tests (CliRunner, no -H) and the e2e tests (a subprocess with
    the session's environment) read."""
    from dockyard.common.contexts import config_dir

    private = Path(os.environ["DOCKYARD_CONFIG"]).resolve()
    assert config_dir().resolve() == private
    code = "from dockyard.common.contexts import config_dir; print(config_dir())"
    seen = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert Path(seen).resolve() == private
    # Even with DOCKYARD_CONFIG unset, the platform default is under the private home.
    env = {k: v for k, v in os.environ.items() if k != "DOCKYARD_CONFIG"}
    seen = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    ).stdout.strip()
    assert not Path(seen).resolve().is_relative_to(_real_home())


def test_hypothesis_prints_the_reproduction_blob() -> None:
    assert settings.default.print_blob is True
    assert settings.default.derandomize is False  # CI explores; a failure prints its blob


SAMPLE = """
import pytest

def test_passes():
    pass

def test_missing_prerequisite():
    pytest.skip("needs root, runc, conmon and /bin/busybox")

@pytest.mark.skipif(True, reason="skopeo is not installed")
def test_marked():
    pass

def test_optional():
    pytest.skip("optional: a tool only some hosts have")

@pytest.fixture
def needs_registry():
    pytest.skip("docker-registry is not installed")

def test_fixture_skip(needs_registry):
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.mark.parametrize("require_all", ["1", ""])
def test_require_all_turns_skips_into_failures(tmp_path: Path, require_all: str) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DOCKYARD_REQUIRE_ALL": require_all}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.session_guards",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    summary = done.stdout.strip().splitlines()[-1]
    if require_all:
        assert done.returncode == 1, done.stdout
        # A skip in setup (a mark, a fixture) is an error, one in the test a failure.
        assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in summary, done.stdout
        assert "FAILED test_sample.py::test_missing_prerequisite" in done.stdout
        for name in ("test_marked", "test_fixture_skip"):
            assert f"ERROR test_sample.py::{name}" in done.stdout, done.stdout
        assert "DOCKYARD_REQUIRE_ALL=1 (a prerequisite is missing): skopeo" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
        assert "1 passed, 4 skipped, 1 xfailed" in summary, done.stdout
