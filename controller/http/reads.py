"""The JSON list reads of nodes and services (`GET /v1/nodes`, `GET /v1/services`):
the query parsed into the gRPC request, the answer rendered as the HTTP side renders
it. Shared by the controller's HTTP side (controller/http/routes.py) and the reader
process's HTTP port (controller/read_http.py), so both answer the same JSON, pages
and headers. Light: no store, no view, no event loop of its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from google.protobuf.message import Message

from dockyard.controller.http.events import record_json
from dockyard.v1.control_pb2 import (
    ListNodesRequest,
    ListNodesResponse,
    ListServicesRequest,
    ListServicesResponse,
)
from dockyard.v1.types_pb2 import NodeStatus

__all__ = [
    "MAX_QUERY_VALUES",
    "NEXT_PAGE_TOKEN",
    "ApiError",
    "error_response",
    "nodes_query",
    "nodes_records",
    "paged",
    "services_query",
    "services_records",
    "to_json",
    "values",
]

MAX_QUERY_VALUES = 64  # repeated ?name=&label= filters
NEXT_PAGE_TOKEN = "X-Next-Page-Token"


class ApiError(Exception):
    """An answer other than 200, with its JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": message, "code": code},
        status=status,
        headers=headers,
        dumps=lambda data: json.dumps(data, separators=(",", ":")),
    )


def to_json(value: Any) -> bytes:
    """A record, or a list of records, as JSON bytes."""
    if isinstance(value, Message):
        value = record_json(value)
    elif isinstance(value, list):
        value = [record_json(v) if isinstance(v, Message) else v for v in value]
    return json.dumps(value, separators=(",", ":")).encode()


def nodes_query(request: web.Request) -> ListNodesRequest:
    """`?name=&label=&state=&page_size=&page_token=` as a ListNodesRequest."""
    query = ListNodesRequest(names=values(request, "name"), labels=values(request, "label"))
    for state in values(request, "state"):
        if state.upper() not in ("READY", "DOWN", "UNKNOWN"):
            raise ApiError(
                400,
                "INVALID_ARGUMENT",
                f"state: expected ready, down or unknown, got {state[:64]!r}",
            )
        query.states.append(NodeStatus.State.Value(state.upper()))
    query.page_size, query.page_token = _page_of(request)
    return query


def nodes_records(query: ListNodesRequest, listed: ListNodesResponse) -> Sequence[Message]:
    """The nodes in the order answered: pages in ID order, a whole list by name."""
    if query.page_size:
        return list(listed.nodes)
    return sorted(listed.nodes, key=lambda n: n.spec.name)


def services_query(request: web.Request) -> ListServicesRequest:
    """`?mode=&name=&page_size=&page_token=` as a ListServicesRequest."""
    query = ListServicesRequest(mode=request.query.get("mode", ""), names=values(request, "name"))
    query.page_size, query.page_token = _page_of(request)
    return query


def services_records(query: ListServicesRequest, listed: ListServicesResponse) -> Sequence[Message]:
    """The services in the order answered: pages in ID order, a whole list by name."""
    if query.page_size:
        return list(listed.services)
    return sorted(listed.services, key=lambda s: s.service.spec.name)


def paged(response: web.Response, next_page_token: str) -> web.Response:
    """A page: the token of the next one in `X-Next-Page-Token` (none on the last)."""
    if next_page_token:
        response.headers[NEXT_PAGE_TOKEN] = next_page_token
    return response


def values(request: web.Request, key: str) -> list[str]:
    found = [v for v in request.query.getall(key, []) if v]
    if len(found) > MAX_QUERY_VALUES:
        raise ApiError(400, "INVALID_ARGUMENT", f"{key}: at most {MAX_QUERY_VALUES} values")
    return found


def _page_of(request: web.Request) -> tuple[int, str]:
    """`?page_size=N&page_token=T` (controller/snapshot.py checks their ranges)."""
    raw = request.query.get("page_size", "0") or "0"
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(400, "INVALID_ARGUMENT", f"page_size: expected a number, got {raw[:32]!r}")
    return int(raw), request.query.get("page_token", "")
