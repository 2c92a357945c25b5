"""Names, labels, sizes and durations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.common.sizes import parse_duration, parse_size
from dockyard.common.validation import ValidationError, check_labels, parse_label

label_keys = st.from_regex(r"\A[a-z0-9]([a-z0-9_./-]{0,20}[a-z0-9])?\Z")


@given(key=label_keys, value=st.text(st.characters(min_codepoint=32), max_size=50))
def test_any_valid_label_round_trips(key: str, value: str) -> None:
    assert parse_label("--label-add", f"{key}={value}") == (key, value)


@pytest.mark.parametrize("text", ["=x", "=", "-a=1", "a b=1", "x" * 200 + "=1", "a=\x01"])
def test_malformed_labels_name_the_problem(text: str) -> None:
    with pytest.raises(ValidationError, match="--label-add"):
        parse_label("--label-add", text)


def test_too_many_labels() -> None:
    with pytest.raises(ValidationError, match="at most 64 labels"):
        check_labels("spec.labels", {f"k{i}": "" for i in range(65)})


@pytest.mark.parametrize(
    ("text", "size"),
    [("64m", 64 << 20), ("1G", 1 << 30), ("512", 512), ("1.5k", 1536), ("2gb", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("2", 2), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "1m30", "-5s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
