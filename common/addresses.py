"""host:port parsing with the project's default ports."""

from __future__ import annotations

CONTROLLER_PORT = 7400
AGENT_PORT = 7401
# An agent's Prometheus /metrics (`dockyard-agent run --metrics-listen`), by convention.
AGENT_METRICS_PORT = 7403
# The controller's join port: TLS without client certificates, for `dockyard-agent join`.
JOIN_PORT = 7399


class AddressError(ValueError):
    pass


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port', 'tcp://host:port' -> (host, port)."""
    text = address.strip()
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    if not text:
        raise AddressError("address is empty")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise AddressError(f"address {address!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressError(f"address {address!r}: port {port_text!r} is not a number in 1-65535")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """'host:port', with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize(address: str, default_port: int) -> str:
    return join_host_port(*split_host_port(address, default_port))
