"""gRPC metadata keys the daemons send and the CLI reads."""

from __future__ import annotations

WARNING_KEY = "dockyard-warning"
"""Trailing metadata: something the user should know about an accepted request."""
