"""Detach keys: Docker's syntax, and finding the sequence in a stream of input."""

from __future__ import annotations

import pytest

from dockyard.agent.containers.detach import DetachScanner, parse_detach_keys
from dockyard.agent.containers.errors import InvalidArgument


def test_parse_docker_syntax() -> None:
    assert parse_detach_keys("") == b"\x10\x11"  # ctrl-p,ctrl-q
    assert parse_detach_keys("ctrl-a,x,ctrl-@,ctrl-[,ctrl-_") == b"\x01x\x00\x1b\x1f"
    assert parse_detach_keys("CTRL-Z") == b"\x1a"


@pytest.mark.parametrize("bad", ["ctrl-", "ctrl-1", "ab", "é", ",", "ctrl-p," * 17])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="detach"):
        parse_detach_keys(bad)


def test_scanner_passes_input_and_detaches_on_the_whole_sequence() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"ls\r") == (b"ls\r", False)
    assert scanner.feed(b"a\x10") == (b"a", False)  # held back: may start the sequence
    assert scanner.feed(b"\x11after") == (b"", True)  # never reaches the process


def test_scanner_flushes_a_broken_sequence() -> None:
    scanner = DetachScanner(b"\x10\x11")
    assert scanner.feed(b"\x10") == (b"", False)
    assert scanner.feed(b"x") == (b"\x10x", False)
    assert scanner.feed(b"\x10\x10\x11") == (b"\x10", True)


def test_one_key_and_no_keys() -> None:
    assert DetachScanner(b"\x1d").feed(b"ab\x1dcd") == (b"ab", True)
    assert DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
