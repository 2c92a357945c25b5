"""What a gRPC TLS failure says, told apart without loading the authorization code
(the CLI asks on its start-up path)."""

from __future__ import annotations


def not_a_controller(details: str) -> bool:
    """Whether a gRPC connection failure means the server's certificate, though from a
    CA the client trusts, does not name it a controller (`pki.CONTROLLER_TLS_NAME`)."""
    lowered = details.lower()
    return "hostname verification" in lowered or "peer name" in lowered
