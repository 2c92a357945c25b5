"""bench_scale's read percentiles pooled over every round (a short round sampled once
a second has a handful of reads, and the p99 of a handful is its slowest read)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def _bench_scale() -> ModuleType:
    path = Path(__file__).parent / "bench" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_scale", module)
    spec.loader.exec_module(module)
    return module


def _run(service_ls: list[float]) -> dict[str, Any]:
    return {"samples": {"service ls": service_ls, "node ls": []}}


def test_pooled_takes_every_rounds_reads() -> None:
    bench = _bench_scale()
    # three rounds of 100 reads: one slow read in each, at 1, 2 and 3 s
    runs = [_run([0.001] * 99 + [float(n)]) for n in (1, 2, 3)]
    p50, p99, count = bench.pooled(runs, "service ls")
    assert count == 300
    assert p50 == 1.0
    # the 297th of 300 sorted: the slow reads are the last three
    assert p99 == 1000.0


def test_pooled_without_samples() -> None:
    bench = _bench_scale()
    assert bench.pooled([_run([]), {}], "service ls") == (0.0, 0.0, 0)
    assert bench.pooled([_run([0.002])], "node ls") == (0.0, 0.0, 0)
