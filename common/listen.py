"""Binding a gRPC server's port, whichever way grpc reports a failure."""

from __future__ import annotations

import grpc

__all__ = ["bind_port"]


def bind_port(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """The bound port, or 0 when `address` cannot be bound (in use, invalid). grpc returns
    0 for some failures and raises RuntimeError for others (a port taken between a
    check and the bind); either way the daemon says so in one line instead of a trace."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        return 0
