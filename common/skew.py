"""The version-skew policy (docs/upgrades.md), as `dockyard version` and `node ls` show it.

- Agents may be one minor version behind the controllers (same major), never ahead:
  controllers are upgraded first, then the agents one at a time.
- Controllers of two adjacent minor versions may share a cluster (a rolling upgrade).
- Patch versions never matter. A version that is not MAJOR.MINOR[.PATCH...] ("dev", a
  tree without package metadata) is not judged.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:[.+-].*)?$")


def minor_of(version: str) -> tuple[int, int] | None:
    """(major, minor) of a release version; None when it is not one."""
    match = _VERSION.match(version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def agent_skew(controller: str, agent: str) -> str:
    """ "" when the agent's version is supported against this controller's; else why not."""
    ours, theirs = minor_of(controller), minor_of(agent)
    if ours is None or theirs is None or ours == theirs:
        return ""
    if theirs[0] != ours[0] or theirs[1] > ours[1] or ours[1] - theirs[1] > 1:
        if theirs > ours:
            return (
                f"unsupported: newer than the controller ({controller}): upgrade the "
                "controllers first"
            )
        return f"unsupported: more than one minor version behind the controller ({controller})"
    return f"one minor behind the controller ({controller}): supported, upgrade soon"


def controller_skew(versions: list[str]) -> str:
    """ "" when the controllers' versions may share a cluster; else why not."""
    minors = sorted({m for m in map(minor_of, versions) if m is not None})
    if len(minors) <= 1:
        return ""
    low, high = minors[0], minors[-1]
    if low[0] == high[0] and high[1] - low[1] == 1:
        return (
            f"controllers at {low[0]}.{low[1]} and {high[0]}.{high[1]}: a rolling upgrade, "
            "finish it"
        )
    return "unsupported: controllers more than one minor version apart: " + ", ".join(
        sorted(set(versions))
    )


def short(skew: str) -> str:
    """A table cell's word for a skew message: "", "behind" or "unsupported"."""
    if not skew:
        return ""
    return "unsupported" if skew.startswith("unsupported") else "behind"
