"""State directories are private (0700): made so, or tightened with a log line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dockyard.common.statedir import ensure_private_dir

BIN = Path(sys.executable).parent


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    old = os.umask(0o022)
    try:
        ensure_private_dir(state)
    finally:
        os.umask(old)
    assert mode_of(state) == 0o700


def test_a_loose_state_dir_is_tightened_with_a_log_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    (state / "keep").write_text("x")
    with capture_logs() as logs:
        ensure_private_dir(state)
    assert mode_of(state) == 0o700
    assert (state / "keep").read_text() == "x"
    assert [e["event"] for e in logs] == ["state_dir.tightened"]
    assert logs[0]["was"] == "0o755"
    with capture_logs() as again:
        ensure_private_dir(state)
    assert again == []  # already private: nothing to say


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    (tmp_path / "state").symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        ensure_private_dir(tmp_path / "state")
    assert mode_of(target) == 0o755


def test_controller_init_makes_its_state_dir_private(tmp_path: Path) -> None:
    state = tmp_path / "controller"
    state.mkdir()
    state.chmod(0o755)
    env = {**os.environ, "DOCKYARD_CONFIG": str(tmp_path / "cli-config")}
    subprocess.run(
        [
            str(BIN / "dockyard-controller"),
            "init",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:1",
            "--context",
            "t",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert mode_of(state) == 0o700
