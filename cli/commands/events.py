"""`dockyard events`: the cluster's changes as they happen, as `docker events` prints them.

The controller says where its HTTP side listens (GetInfo); the stream is its
Server-Sent Events (`/v1/events`), read over HTTPS with the same TLS identity the
CLI uses for gRPC. Each event is one line; `-o json` prints each as JSON.
"""

from __future__ import annotations

import heapq
import json
import queue
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import urlencode

import click

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.commands.service_wait import control_stub
from dockyard.cli.options import GlobalOptions, output_option, pass_options

KINDS = ("node", "service", "task")
READ_TIMEOUT = 60.0  # the controller sends a keep-alive every 15 s
MERGE_WINDOW = 0.5  # with several controllers: how long an event waits for older ones


@dataclass
class EventFilter:
    kinds: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    def matches(self, event: dict[str, Any]) -> bool:
        if self.kinds and event.get("kind") not in self.kinds:
            return False
        return (
            not self.names
            or name_of(event) in self.names
            or any(name_of(event).startswith(f"{n}.") for n in self.names)
        )


def parse_filters(items: tuple[str, ...]) -> EventFilter:
    """`type=node|service|task` and `name=NAME` (a service name also matches its tasks)."""
    found = EventFilter()
    for item in items:
        key, eq, value = item.partition("=")
        if key == "type" and value in KINDS:
            found.kinds.add(value)
        elif key in ("name", "service") and eq and value:
            found.names.add(value)
        else:
            raise click.BadParameter(
                f"unknown filter {item!r} (type=node|service|task, name=NAME)",
                param_hint="--filter",
            )
    return found


def name_of(event: dict[str, Any]) -> str:
    record = event.get("record") or {}
    if not record:  # removed: only the id is left
        return ""
    if event.get("kind") == "task":
        slot = record.get("slot") or record.get("node_id", "")[:12]
        return f"{record.get('service_name', '')}.{slot}"
    return str((record.get("spec") or {}).get("name", ""))


def describe(event: dict[str, Any]) -> str:
    """`2026-11-28T01:02:03Z task updated 1a2b3c4d5e6f web.1 RUNNING (desired RUNNING)`."""
    record = event.get("record") or {}
    meta = record.get("meta") or {}
    when = meta.get("updated_at") or meta.get("created_at") or ""
    detail = ""
    if event.get("kind") == "task":
        status = (record.get("status") or {}).get("state", "")
        detail = f"{status} (desired {record.get('desired_state', '')})"
    elif event.get("kind") == "node":
        detail = str((record.get("status") or {}).get("state", ""))
    elif event.get("kind") == "service" and event.get("type") != "removed":
        detail = f"spec version {record.get('spec_version', '')}"
    return " ".join(
        part
        for part in (
            when[:19] + "Z" if when else "-",
            str(event.get("kind")),
            str(event.get("type")),
            str(event.get("id", ""))[:12],
            name_of(event),
            detail,
        )
        if part
    )


def http_endpoint(target: Target, advertised: str) -> tuple[str, int]:
    """The host to dial (the -H host when the controller listens on every address)."""
    if not advertised:
        raise CliError(
            f'the controller at {target.address} has no HTTP side (started with --http-listen "")'
        )
    host, _, port = advertised.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = target.address.rpartition(":")[0]
    return host.strip("[]"), int(port)


def _connection(target: Target, host: str, port: int) -> HTTPConnection:
    if target.tls is None:
        return HTTPConnection(host, port, timeout=READ_TIMEOUT)
    context = ssl.create_default_context(cafile=target.tls.ca)
    try:
        context.load_cert_chain(target.tls.cert, target.tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot read TLS material: {exc}") from exc
    return HTTPSConnection(host, port, timeout=READ_TIMEOUT, context=context)


def stream_events(target: Target, since: str | None) -> Iterator[dict[str, Any]]:
    """The controller's events, decoded, until it closes the stream."""
    from dockyard.v1.control_pb2 import GetInfoRequest

    info = call(target, control_stub, "GetInfo", GetInfoRequest())
    host, port = http_endpoint(target, info.http_address)
    connection = _connection(target, host, port)
    path = "/v1/events" + (f"?{urlencode({'since': since})}" if since else "")
    try:
        connection.request("GET", path, headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status != 200:
            body = response.read(2000).decode(errors="replace")
            raise CliError(f"events from {host}:{port}: HTTP {response.status}: {body.strip()}")
        name, data = "", []
        for raw in response:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                decoded = json.loads("\n".join(data))
                if name in ("reset", "error"):
                    raise CliError(
                        f"the event stream ended: {decoded.get('reason', name)}; "
                        "run again to follow from now"
                    )
                yield decoded
                name, data = "", []
    except (OSError, HTTPException, ssl.SSLError) as exc:
        raise CliError(f"events from {host}:{port}: {exc}") from exc
    finally:
        connection.close()


def event_time(event: dict[str, Any]) -> float:
    """When the event's record changed (seconds since the epoch; 0 when unstamped)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    meta = (event.get("record") or {}).get("meta") or {}
    text = meta.get("updated_at") or meta.get("created_at")
    if not text:
        return 0.0
    stamp = Timestamp()
    try:
        stamp.FromJsonString(str(text))
    except ValueError:
        return 0.0
    return stamp.seconds + stamp.nanos / 1e9


class Merger:
    """Events of several controllers in the order they happened: each waits `window`
    seconds after it arrived, so a later-arriving older event still goes first."""

    def __init__(self, window: float = MERGE_WINDOW) -> None:
        self.window = window
        self._heap: list[tuple[float, int, str, dict[str, Any], float]] = []
        self._sequence = 0

    def add(self, label: str, event: dict[str, Any], arrived: float) -> None:
        heapq.heappush(self._heap, (event_time(event), self._sequence, label, event, arrived))
        self._sequence += 1

    def ready(self, now: float, flush: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The events to print now, oldest first (all of them with `flush`)."""
        out = []
        while self._heap and (flush or min(e[4] for e in self._heap) + self.window <= now):
            _, _, label, event, _ = heapq.heappop(self._heap)
            out.append((label, event))
        return out


def _pump(target: Target, since: str | None, out: queue.Queue[Any]) -> None:
    try:
        for event in stream_events(target, since):
            out.put((target, event, time.monotonic()))
    except CliError as exc:
        out.put((target, exc, time.monotonic()))
    except Exception as exc:  # any failure of one stream is that target's own line
        out.put((target, CliError(str(exc)), time.monotonic()))
    finally:
        out.put((target, None, time.monotonic()))


def _print(label: str | None, event: dict[str, Any], output: str) -> None:
    if output == "table":
        click.echo(f"{label} {describe(event)}" if label else describe(event))
    else:
        data = {"target": label, "record": event} if label else event
        click.echo(json.dumps(data, separators=(",", ":")))
    sys.stdout.flush()


def follow_many(
    targets: list[Target],
    since: str | None,
    wanted: EventFilter,
    output: str,
    labelled: bool = True,
    until: float | None = None,
) -> bool:
    """Every target's events merged by time, each line led by its target (`labelled`); a
    target whose stream fails gets one stderr line. With `until` (epoch seconds) it stops
    then, and leaves out events stamped after it. Returns whether any failed."""
    incoming: queue.Queue[Any] = queue.Queue()
    for target in targets:
        threading.Thread(target=_pump, args=(target, since, incoming), daemon=True).start()
    merger, open_streams, failed = Merger(), len(targets), False
    while open_streams:
        ended = until is not None and time.time() >= until
        try:
            target, item, arrived = incoming.get(timeout=0.1)
            if item is None:
                open_streams -= 1
            elif isinstance(item, CliError):
                failed = True
                prefix = f"{target.label}: " if labelled else ""
                click.echo(f"dockyard: {prefix}{item.message}", err=True)
            elif (
                "kind" in item
                and wanted.matches(item)
                and (until is None or event_time(item) <= until)
            ):
                merger.add(target.label, item, arrived)
        except queue.Empty:
            pass
        for label, event in merger.ready(time.monotonic(), flush=ended or not open_streams):
            _print(label if labelled else None, event, output)
        if ended:
            break
    return failed


@click.command("events")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="type=node|service|task, name=NAME (a service's name also matches its tasks).",
)
@click.option(
    "--since",
    default=None,
    metavar="EVENT_ID",
    help="Start after this event id (or etcd revision) instead of now.",
)
@click.option(
    "--until",
    default=None,
    metavar="TIME",
    help="Stop at TIME (RFC 3339, a Unix time, or a duration ago such as 10m).",
)
@output_option
@pass_options
def events(
    options: GlobalOptions, filters: tuple[str, ...], since: str | None, until: str | None
) -> None:
    """Print the cluster's changes as they happen (Ctrl-C to stop)."""
    from dockyard.cli.humanize import parse_since

    wanted = parse_filters(filters)
    try:
        stop = parse_since(until) if until is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from None
    try:
        if options.many or stop is not None:
            if follow_many(
                options.targets(), since, wanted, options.output, labelled=options.many, until=stop
            ):
                sys.exit(1)
            return
        for event in stream_events(options.target(), since):
            if "kind" not in event or not wanted.matches(event):
                continue  # the stream's own notices (ready, reset)
            _print(None, event, options.output)
    except KeyboardInterrupt:
        pass
