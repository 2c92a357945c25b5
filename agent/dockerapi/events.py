"""`GET /events`: the node's events as Docker streams them, one JSON object per line.

`since` replays what the agent's `EventBus` still keeps; `until` ends the stream (at
once, when it is in the past); `filters` select by `type`, `event` (the action),
`container`, `image`, `volume`, `network` and `label`. Each line has Docker's shape:
`Type`, `Action`, `Actor{ID, Attributes}`, `scope`, `time`, `timeNano`, and for
containers and images the old `status`/`id`/`from` fields the docker CLI still prints.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import bad_request
from dockyard.agent.dockerapi.filters import parse_filters
from dockyard.agent.events import Event, EventBus

__all__ = ["EventFilters", "add_routes", "docker_event", "event_bus", "parse_timestamp"]

log = structlog.get_logger(__name__)

_POLL = 1.0
"""How often a quiet stream looks whether its client is gone (or `until` passed)."""
_KNOWN = frozenset({"type", "event", "container", "image", "volume", "network", "label"})


def parse_timestamp(value: str, now: float | None = None) -> int:
    """`since`/`until` as nanoseconds: Unix seconds with an optional fraction (what the
    CLI sends), or a Go-style duration ago (`10m`, `1h30m`) as some clients send.

    Raises:
        DockerApiError: 400 when the value is neither.
    """
    text = value.strip()
    try:
        seconds, _, fraction = text.partition(".")
        whole = int(seconds)
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
        if not fraction.isdigit() and fraction:
            raise ValueError(text)
        return whole * 1_000_000_000 + nanos
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    number = ""
    index = 0
    if not text:
        raise bad_request("since/until: a timestamp is required")
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text[index : index + 2] == "ms" else char
        if unit not in units or not number:
            raise bad_request(f"since/until: {value!r} is not a Unix timestamp or a duration")
        total += float(number) * units[unit]
        number = ""
        index += len(unit)
    if number:
        raise bad_request(f"since/until: {value!r} is not a Unix timestamp or a duration")
    base = time.time() if now is None else now
    return int((base - total) * 1_000_000_000)


class EventFilters:
    """Docker's event filters; values of one name are alternatives, names all apply."""

    def __init__(self, filters: Mapping[str, list[str]]) -> None:
        unknown = set(filters) - _KNOWN
        if unknown:
            raise bad_request(f"invalid filter '{sorted(unknown)[0]}'")
        self.filters = filters

    def matches(self, event: Event) -> bool:
        """Whether the event passes every filter."""
        f = self.filters
        if f.get("type") and event.type not in f["type"]:
            return False
        if f.get("event") and not any(_action_matches(event.action, e) for e in f["event"]):
            return False
        for kind in ("container", "image", "volume", "network"):
            wanted = f.get(kind)
            if not wanted:
                continue
            if event.type != kind and not (kind == "image" and event.type == "container"):
                return False
            if not any(_actor_matches(event, kind, w) for w in wanted):
                return False
        for label in f.get("label", []):
            key, sep, value = label.partition("=")
            if key not in event.attributes or (sep and event.attributes[key] != value):
                return False
        return True


def _action_matches(action: str, wanted: str) -> bool:
    # `exec_start: sh -c ...` matches `exec_start`, as Docker's filter does.
    return action == wanted or action.split(":", 1)[0] == wanted


def _actor_matches(event: Event, kind: str, wanted: str) -> bool:
    if kind == "image" and event.type == "container":
        image = event.attributes.get("image", "")
        return image == wanted or image.split(":", 1)[0] == wanted
    name = event.attributes.get("name", "")
    return event.actor_id == wanted or event.actor_id.startswith(wanted) or name == wanted


def docker_event(event: Event) -> dict[str, Any]:
    """One line of `GET /events`."""
    seconds = event.time_ns // 1_000_000_000
    message: dict[str, Any] = {
        "Type": event.type,
        "Action": event.action,
        "Actor": {"ID": event.actor_id, "Attributes": dict(event.attributes)},
        "scope": "local",
        "time": seconds,
        "timeNano": event.time_ns,
    }
    if event.type in ("container", "image"):
        message["status"] = event.action
        message["id"] = event.actor_id
        if event.type == "container":
            message["from"] = event.attributes.get("image", "")
    return message


def _encode(event: Event) -> bytes:
    return json.dumps(docker_event(event), separators=(",", ":")).encode() + b"\n"


def event_bus(ctx: DockerApiContext) -> EventBus | None:
    """The node's event bus: the container service's (None: a runtime without one)."""
    return ctx.containers.events if ctx.containers is not None else None


def add_routes(routes: web.RouteTableDef, ctx: DockerApiContext) -> None:
    """The events endpoint."""
    quiet = EventBus()  # a runtime without a container service: a stream with no events

    @routes.get("/events")
    async def events(request: web.Request) -> web.StreamResponse:
        bus = event_bus(ctx) or quiet
        wanted = EventFilters(parse_filters(request.query.get("filters")))
        since = parse_timestamp(request.query["since"]) if request.query.get("since") else None
        until = parse_timestamp(request.query["until"]) if request.query.get("until") else None
        subscription = bus.subscribe()  # before replaying: nothing falls in between
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            replayed = 0
            if since is not None:
                for event in bus.past(since, until):
                    if wanted.matches(event):
                        await response.write(_encode(event))
                    replayed = max(replayed, event.time_ns)
            while until is None or time.time_ns() < until:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                timeout = _POLL
                if until is not None:
                    timeout = min(_POLL, max(0.0, (until - time.time_ns()) / 1e9))
                try:
                    event = await asyncio.wait_for(subscription.get(), timeout)
                except TimeoutError:
                    continue
                if event.time_ns <= replayed:
                    continue  # already sent from the history
                if until is not None and event.time_ns > until:
                    break
                if wanted.matches(event):
                    await response.write(_encode(event))
            await response.write_eof()
            return response
        except ConnectionResetError:
            return response  # the client went away; nothing to answer
        finally:
            subscription.close()
            if subscription.dropped:
                log.info("dockerapi.events_dropped", dropped=subscription.dropped)
