"""The tree is ruff-clean, ruff-formatted and mypy --strict clean (the style guide's tooling)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    result = run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-5000:]


def test_the_tree_is_ruff_formatted() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, "run `.venv/bin/ruff format .`:\n" + result.stdout[-5000:]


def test_mypy_strict_finds_nothing(tmp_path: Path) -> None:
    result = run(str(BIN / "mypy"), "-p", "dockyard", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-5000:]
