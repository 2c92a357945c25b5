"""The Docker API versions served."""

from __future__ import annotations

from typing import Final

__all__ = ["API_VERSION", "MIN_API_VERSION", "parse_version"]

API_VERSION: Final = "1.43"
"""The version announced (Docker 24's); newer clients negotiate down to it."""
MIN_API_VERSION: Final = "1.24"
"""The oldest version served (Docker 1.12's), as dockerd's default minimum."""


def parse_version(text: str) -> tuple[int, int]:
    """``"1.43"`` as ``(1, 43)``."""
    major, _, minor = text.partition(".")
    return int(major), int(minor)
