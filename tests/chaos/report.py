"""Turn the chaos suite's JSON rows into the markdown table of docs/reliability.md.

    DOCKYARD_CHAOS_REPORT=/tmp/chaos.json pytest tests/chaos
    python -m tests.chaos.report /tmp/chaos.json

A scenario with several rows (the bounded run and the soak) keeps its last one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = (
    "| Scenario | Runs | Recovery p50 | Recovery p99 | Target | Max extra replicas "
    "| Extra-replica window | Violations | Other (p50 / p99) |\n"
    "|---|---:|---:|---:|---|---:|---:|---:|---|"
)


def table(rows: list[dict[str, Any]]) -> str:
    latest = {row["scenario"]: row for row in rows}
    lines = [HEADER]
    for row in latest.values():
        extra = row.get("extra", {})
        names = sorted({key.rsplit("_", 1)[0] for key in extra})
        other = "; ".join(
            f"{name}: {extra[name + '_p50']:.2f} / {extra[name + '_p99']:.2f} s" for name in names
        )
        lines.append(
            f"| {row['scenario']} | {row['runs']} | {row['recovery_p50']:.2f} s "
            f"| {row['recovery_p99']:.2f} s | {row['target']} | {row['max_extra_replicas']} "
            f"| {row['extra_replica_window']:.2f} s | {row['violations']} | {other} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.chaos.report REPORT.json", file=sys.stderr)
        return 2
    print(table(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
