"""`dockyard --help` stays fast: grpc, protobuf, rich and YAML load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_loads_nothing_heavy_at_start() -> None:
    code = (
        "import sys, dockyard.cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules "
        "if m.startswith(('grpc', 'google', 'rich', 'yaml', 'dockyard.v1'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
