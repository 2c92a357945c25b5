"""The probe bench_vip_follow.py runs inside a task's network namespace (not a benchmark).

    ip netns exec NS python vip_probe.py up|down COUNT VIP DNS_SERVER TIMEOUT

It asks the node's DNS server for ``tasks.web`` and fetches ``http://VIP/`` (each web
task answers with its task ID) in turn, about every 10 ms, and logs each answer with
its wall-clock time. It stops once the service has settled at COUNT tasks:

  up    DNS lists COUNT addresses and the VIP has reached COUNT distinct tasks;
  down  DNS lists COUNT addresses and the last 40 VIP fetches all succeeded.

The log goes to stdout as JSON; the bench, which knows by then which task came or went,
works out the times from it.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import dns.message
import dns.query
import dns.rdatatype

QUIET = 40  # fetches in a row without a failure: the removed backend is gone


def lookup(server: str) -> list[str] | None:
    """The A records of tasks.web, or None when the server did not answer."""
    query = dns.message.make_query("tasks.web", dns.rdatatype.A)
    try:
        answer = dns.query.udp(query, server, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return None
    return sorted(r.address for rrset in answer.answer for r in rrset if r.rdtype == 1)


def fetch(vip: str) -> str:
    """The body of http://VIP/ (a task ID), or "" when the connection failed."""
    try:
        with socket.create_connection((vip, 80), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            sock.settimeout(0.5)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return ""
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace").strip() if head.startswith(b"HTTP/1.") else ""


def settled(mode: str, count: int, names: list[str] | None, bodies: list[str]) -> bool:
    if names is None or len(names) != count:
        return False
    if mode == "up":
        return len({b for b in bodies if b}) >= count
    recent = bodies[-QUIET:]
    return len(recent) == QUIET and all(recent)


def main() -> None:
    mode, count, vip, server, timeout = sys.argv[1:6]
    dns_log: list[tuple[float, list[str] | None]] = []
    vip_log: list[tuple[float, str]] = []
    bodies: list[str] = []
    names: list[str] | None = None
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        names = lookup(server)
        dns_log.append((time.time(), names))
        body = fetch(vip)
        vip_log.append((time.time(), body))
        bodies.append(body)
        if settled(mode, int(count), names, bodies):
            break
        time.sleep(0.01)
    json.dump({"dns": dns_log, "vip": vip_log}, sys.stdout)


if __name__ == "__main__":
    main()
