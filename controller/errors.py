"""Errors the controller's parts raise, and their gRPC status codes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc
import structlog

from dockyard.common.validation import ValidationError
from dockyard.controller.cluster import PolicyDenied
from dockyard.controller.store import AlreadyExists, Conflict, NotFound, StoreUnavailable

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class FailedPrecondition(Exception):
    """The request is valid but the cluster is not in a state to carry it out."""


class NotLeader(Exception):
    """This controller does not hold the leader lease."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (PolicyDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotLeader, grpc.StatusCode.UNAVAILABLE),
]


# Messages quote the request (a name, a reference); a huge one must not make the
# status itself too large for gRPC's metadata limits.
MAX_DETAILS = 1000


def details_for(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS] + "... (truncated)"


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return None


def grpc_errors(
    method: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Turn the controller's errors into gRPC statuses with their messages.

    The servicer method's last positional argument is the grpc.aio context.
    """

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        context: Any = args[-1]
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                log.exception("api.unhandled_error", method=method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {details_for(exc)}")
                raise
            await context.abort(code, details_for(exc))
            raise

    return wrapper
