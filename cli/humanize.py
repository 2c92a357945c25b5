"""Durations, ages, statuses and sizes written the way docker writes them.

Pure functions of their inputs (and an optional `now`), so tests pin them.
"""

from __future__ import annotations

import re
import time

from dockyard.common.sizes import parse_duration
from dockyard.common.timestamps import is_set, to_seconds

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "bytes_size",
    "container_status",
    "created_ago",
    "human_duration",
    "human_size",
    "parse_since",
    "short_id",
    "truncate",
]


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration: 'Less than a second', '3 minutes', 'About an hour'."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _since(stamp: Any, now: float | None) -> float:
    return max(0.0, (time.time() if now is None else now) - to_seconds(stamp))


def created_ago(stamp: Any, now: float | None = None) -> str:
    """'2 seconds ago'; '' when the timestamp is unset."""
    if not is_set(stamp):
        return ""
    return f"{human_duration(_since(stamp, now))} ago"


def container_status(state: Any, now: float | None = None) -> str:
    """The STATUS column: 'Created', 'Up 3 minutes', 'Exited (3) 2 seconds ago'."""
    status = state.status
    if status == "running":
        if state.restart_count and not is_set(state.started_at):
            return "Restarting"
        up = human_duration(_since(state.started_at, now)) if is_set(state.started_at) else ""
        return f"Up {up}".rstrip()
    if status == "restarting":
        code = f" ({state.exit_code})" if state.has_exit_code else ""
        return f"Restarting{code} {created_ago(state.finished_at, now)}".rstrip()
    if status == "exited":
        if not is_set(state.finished_at):
            return f"Exited ({state.exit_code})"
        return f"Exited ({state.exit_code}) {created_ago(state.finished_at, now)}"
    if status == "dead":
        return "Dead"
    if status == "created":
        return "Created"
    return status.capitalize() if status else "Unknown"


def _custom_size(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    index = 0
    while size >= base and index < len(units) - 1:
        size /= base
        index += 1
    return f"{size:.{precision}g}{units[index]}"


def human_size(size: float) -> str:
    """Decimal units with 3 significant digits, as `docker images`: '4.26MB', '830kB'."""
    return _custom_size(float(size), 1000.0, ("B", "kB", "MB", "GB", "TB", "PB"), 3)


def bytes_size(size: float) -> str:
    """Binary units with 4 significant digits, as `docker stats`: '1.5MiB', '7.764GiB'."""
    return _custom_size(float(size), 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 4)


def short_id(identifier: str) -> str:
    """12 characters of an ID, without its 'sha256:' prefix."""
    return identifier.removeprefix("sha256:")[:12]


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: RFC 3339 ('2026-01-02T15:04:05Z'), a Unix time, or a duration
    ago ('10m', '1h30m'). Returns seconds since the epoch; raises ValueError."""
    stripped = text.strip()
    if _RFC3339.match(stripped):
        from datetime import UTC, datetime

        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if re.fullmatch(r"\d{9,}(\.\d+)?", stripped):
        return float(stripped)
    try:
        ago = parse_duration(stripped)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use RFC 3339 (2026-01-02T15:04:05Z), a Unix time "
            "or a duration such as 10m"
        ) from None
    return (time.time() if now is None else now) - ago
