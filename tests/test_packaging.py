"""Every package folder is installed under the dockyard namespace."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {
    "agent": "dockyard.agent",
    "controller": "dockyard.controller",
    "cli": "dockyard.cli",
    "common": "dockyard.common",
    "proto/dockyard/v1": "dockyard.v1",
}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, name in TOP_LEVEL.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), "add these packages to pyproject.toml"
    assert listed - found == set(), "these listed packages have no folder"


def test_the_cli_imports_no_daemon_code_at_start() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dockyard.cli.main; "
        "print(sorted(m for m in sys.modules if m.startswith(('structlog', 'etcd3aio', "
        "'dockyard.controller', 'dockyard.agent'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
