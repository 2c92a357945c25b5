"""The checked-in stubs are exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "proto" / "dockyard" / "v1"


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    fresh = {p.name: p.read_text() for p in (tmp_path / "dockyard" / "v1").glob("*_pb2*")}
    checked_in = {p.name: p.read_text() for p in GENERATED.glob("*_pb2*")}
    assert sorted(fresh) == sorted(checked_in), "stub files differ: run python proto/generate.py"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale stubs {stale}: run python proto/generate.py"
