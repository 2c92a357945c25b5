"""Ports for the daemons and servers the tests start.

A port found by binding to port 0 is in the kernel's ephemeral range: between the test
choosing it and a daemon binding it, an outgoing connection's source port or another
daemon's own bind to port 0 (the controller's embedded etcd picks its ports that way)
can take it, and the daemon fails with "address already in use". Ports handed out here
come from below that range, so nothing but these tests picks them, and no port is handed
out twice in one test session.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000


def _range() -> tuple[int, int]:
    try:
        ephemeral_low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return _LOWEST, max(_LOWEST + 1000, ephemeral_low)


_LOW, _HIGH = _range()
# Sessions running side by side on one machine start at different places.
_next = _LOW + (os.getpid() * 7919) % (_HIGH - _LOW)
_given: set[int] = set()


def _bindable(port: int) -> bool:
    """Whether nothing holds the port for TCP or UDP on any address."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port below the ephemeral range that is free now and was not handed out before."""
    global _next
    for _ in range(_HIGH - _LOW):
        port, _next = _next, _LOW + (_next + 1 - _LOW) % (_HIGH - _LOW)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port left in {_LOW}-{_HIGH - 1} for this test session")
