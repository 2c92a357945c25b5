"""A container's network counters: `/proc/<pid>/net/dev` shows the network namespace of
`pid`, so the container's init process gives its interfaces without entering it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_INTERFACES", "InterfaceCounters", "parse_net_dev", "read_net_dev"]

MAX_INTERFACES = 8
"""Interfaces reported per container (a label value each); the rest are left out."""


@dataclass(frozen=True, slots=True)
class InterfaceCounters:
    interface: str
    receive_bytes: int
    receive_packets: int
    receive_errors: int
    receive_dropped: int
    transmit_bytes: int
    transmit_packets: int
    transmit_errors: int
    transmit_dropped: int


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """Every interface but loopback in a `net/dev` table (two header lines, then one line
    per interface: 8 receive and 8 transmit columns)."""
    found: list[InterfaceCounters] = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        name = name.strip()
        if not sep or name == "lo" or len(fields) < 16 or not all(f.isdigit() for f in fields):
            continue
        n = [int(f) for f in fields]
        found.append(InterfaceCounters(name, n[0], n[1], n[2], n[3], n[8], n[9], n[10], n[11]))
        if len(found) == MAX_INTERFACES:
            break
    return found


def read_net_dev(pid: int, proc: Path = Path("/proc")) -> list[InterfaceCounters]:
    """The interfaces of `pid`'s network namespace; empty when the process is gone."""
    try:
        return parse_net_dev((proc / str(pid) / "net" / "dev").read_text())
    except OSError:
        return []
