"""Docker's reference resolution: exact ID, then exact name, then ID prefix."""

from __future__ import annotations

from dockyard.common.lookup import match_reference

RECORDS = [("abc123", "web"), ("abd456", "abc123x"), ("fff000", "abc")]


def match(ref: str) -> list[tuple[str, str]]:
    return match_reference(ref, RECORDS, lambda r: r[0], lambda r: r[1])


def test_an_exact_id_wins_over_a_name_and_a_name_over_a_prefix() -> None:
    assert match("abc123") == [("abc123", "web")]
    assert match("abc") == [("fff000", "abc")]
    assert match("web") == [("abc123", "web")]


def test_a_prefix_matches_one_or_is_ambiguous() -> None:
    assert match("abd") == [("abd456", "abc123x")]
    assert len(match("ab")) == 2
    assert match("zzz") == []
