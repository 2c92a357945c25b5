"""Each chaos scenario's figures, appended as one row to a JSON file.

Set DOCKYARD_CHAOS_REPORT=path to collect rows; `python -m tests.chaos.report path`
turns them into the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.chaos.invariants import Summary

REPORT_ENV = "DOCKYARD_CHAOS_REPORT"
RUNS_ENV = "DOCKYARD_CHAOS_RUNS"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p50: fraction 0.5)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Run:
    """One run of a scenario: how long recovery took and what the checker saw."""

    recovery: float
    summary: Summary
    extra: dict[str, float] = field(default_factory=dict)  # other measured seconds


@dataclass
class Row:
    scenario: str
    runs: int
    recovery_p50: float
    recovery_p99: float
    max_extra_replicas: int
    extra_replica_window: float
    violations: int
    target: str
    extra: dict[str, float]

    @classmethod
    def of(cls, scenario: str, target: str, runs: list[Run]) -> Row:
        recoveries = [run.recovery for run in runs]
        extra: dict[str, float] = {}
        for name in {key for run in runs for key in run.extra}:
            values = [run.extra[name] for run in runs if name in run.extra]
            extra[f"{name}_p50"] = round(percentile(values, 0.5), 3)
            extra[f"{name}_p99"] = round(percentile(values, 0.99), 3)
        return cls(
            scenario=scenario,
            runs=len(runs),
            recovery_p50=round(percentile(recoveries, 0.5), 3),
            recovery_p99=round(percentile(recoveries, 0.99), 3),
            max_extra_replicas=max(run.summary.max_extra for run in runs),
            extra_replica_window=round(max(run.summary.extra_window for run in runs), 3),
            violations=sum(len(run.summary.violations) for run in runs),
            target=target,
            extra=extra,
        )


def record(row: Row) -> None:
    """Append the row to $DOCKYARD_CHAOS_REPORT (nothing when it is unset)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    target = Path(path)
    rows = json.loads(target.read_text()) if target.exists() else []
    rows.append(asdict(row))
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(rows, indent=1) + "\n")
    temporary.replace(target)
