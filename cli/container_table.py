"""`docker ps`'s table of one agent's containers: rows, headers, IDs.

Free of click and grpc: the full CLI (`container ls`, `ps`) and the fast path
(`cli/fast.py`) print it with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

COMMAND_WIDTH = 20


def command_text(record: Any) -> str:
    """The COMMAND column: entrypoint and command, quoted, cut to 20 characters."""
    from dockyard.cli.humanize import truncate

    words = [*record.config.entrypoint, *record.config.command]
    return f'"{truncate(" ".join(words), COMMAND_WIDTH)}"'


def port_text(port: Any) -> str:
    """`127.0.0.1:8080->80/tcp`, as docker shows a published port."""
    return (
        f"{port.host_ip or '0.0.0.0'}:{port.host_port}->{port.container_port}/"
        f"{port.protocol or 'tcp'}"
    )


def ports_text(record: Any) -> str:
    """The PORTS column: every published port, as bound."""
    return ", ".join(port_text(p) for p in record.network.ports)


def container_rows(
    records: list[Any], now: float | None = None, ports: bool = False
) -> list[list[str]]:
    """`docker ps` rows; `ports` adds the PORTS column (before NAMES)."""
    from dockyard.cli.humanize import container_status, created_ago, short_id

    return [
        [
            short_id(r.id),
            r.image,
            command_text(r),
            created_ago(r.created_at, now),
            container_status(r.state, now),
            *([ports_text(r)] if ports else []),
            r.name,
        ]
        for r in records
    ]


CONTAINER_HEADERS = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
CONTAINER_HEADERS_PORTS = [
    "CONTAINER ID",
    "IMAGE",
    "COMMAND",
    "CREATED",
    "STATUS",
    "PORTS",
    "NAMES",
]


CONTAINER_FIELDS = ["ID", "Image", "Command", "RunningFor", "Status", "Names"]
CONTAINER_FIELDS_PORTS = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names"]


def newest_first(records: Iterable[Any]) -> list[Any]:
    """Containers as docker lists them: the most recently created first."""
    return sorted(records, key=lambda r: (-r.created_at.seconds, -r.created_at.nanos))


def container_table(
    records: Sequence[Any], no_trunc: bool = False
) -> tuple[list[str], list[list[str]], list[Any], list[str], list[str]]:
    """Headers, rows, records, IDs (for -q) and --format field names of `records`
    (PORTS only when something is published)."""
    from dockyard.cli.humanize import short_id

    ports = any(r.network.ports for r in records)
    rows = container_rows(list(records), ports=ports)
    if no_trunc:
        for row, record in zip(rows, records, strict=True):
            row[0] = record.id
            row[2] = '"' + " ".join([*record.config.entrypoint, *record.config.command]) + '"'
    return (
        CONTAINER_HEADERS_PORTS if ports else CONTAINER_HEADERS,
        rows,
        list(records),
        [r.id if no_trunc else short_id(r.id) for r in records],
        CONTAINER_FIELDS_PORTS if ports else CONTAINER_FIELDS,
    )
