"""Statuses, ages and sizes as docker prints them."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.cli.commands.containers import stats_row
from dockyard.cli.container_table import command_text, container_rows
from dockyard.cli.humanize import (
    bytes_size,
    container_status,
    created_ago,
    human_duration,
    human_size,
    parse_since,
    short_id,
)
from dockyard.v1.containers_pb2 import ContainerRecord, ContainerState, ContainerStats

NOW = 1_800_000_000.0


def at(seconds_ago: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((NOW - seconds_ago) * 1e9))
    return stamp


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (180, "3 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_statuses() -> None:
    running = ContainerState(status="running", started_at=at(180))
    assert container_status(running, NOW) == "Up 3 minutes"
    exited = ContainerState(status="exited", exit_code=3, has_exit_code=True, finished_at=at(2))
    assert container_status(exited, NOW) == "Exited (3) 2 seconds ago"
    assert container_status(ContainerState(status="created"), NOW) == "Created"
    assert container_status(ContainerState(status="dead"), NOW) == "Dead"
    assert created_ago(at(7200), NOW) == "2 hours ago"
    assert created_ago(Timestamp(), NOW) == ""


def test_ls_row() -> None:
    record = ContainerRecord(
        id="0123456789abcdef" * 4,
        name="web",
        image="busybox",
        created_at=at(30),
        state=ContainerState(status="running", started_at=at(29)),
    )
    record.config.command.extend(["sh", "-c", "while true; do sleep 1; done"])
    assert command_text(record) == '"sh -c while true; d…"'
    assert container_rows([record], NOW) == [
        [
            "0123456789ab",
            "busybox",
            '"sh -c while true; d…"',
            "30 seconds ago",
            "Up 29 seconds",
            "web",
        ]
    ]


def test_sizes_and_ids() -> None:
    assert human_size(0) == "0B" and human_size(999) == "999B"
    assert human_size(4_260_000) == "4.26MB" and human_size(830_000) == "830kB"
    assert bytes_size(1.5 * 1024**2) == "1.5MiB" and bytes_size(512) == "512B"
    assert short_id("sha256:" + "ab" * 32) == "abababababab"


def test_stats_row_uses_two_samples_for_cpu() -> None:
    record = ContainerRecord(id="f" * 64, name="web")
    first = ContainerStats(
        cpu_usage_ns=1_000_000_000,
        cpu_percent=3.0,
        memory_usage=1024**2,
        memory_limit=64 * 1024**2,
        pids=2,
        read_at=at(1),
    )
    second = ContainerStats(
        cpu_usage_ns=1_500_000_000,
        memory_usage=1024**2,
        memory_limit=64 * 1024**2,
        pids=3,
        read_at=at(0),
    )
    assert stats_row(record, first) == [
        "ffffffffffff",
        "web",
        "3.00%",
        "1MiB / 64MiB",
        "1.56%",
        "2",
    ]
    assert stats_row(record, second, first)[2] == "50.00%"


def test_since() -> None:
    assert parse_since("10m", NOW) == NOW - 600
    assert parse_since("2027-01-15T08:00:00Z") == 1_800_000_000.0
    assert parse_since("2027-01-15T09:00:00+01:00") == 1_800_000_000.0
    assert parse_since("1800000000") == 1_800_000_000.0
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_since("yesterday")
