"""Which package may import which: the daemons never import the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", ["controller", "agent", "common"])
def test_a_daemon_package_never_imports_the_cli(package: str) -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / package).rglob("*.py")
        for module in imported_modules(path)
        if module == "dockyard.cli" or module.startswith("dockyard.cli.")
    )
    assert offenders == [], "move what both need to common/, or the command to cli/"
