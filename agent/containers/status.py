"""Map container and image errors to gRPC status codes with their messages."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog

from dockyard.agent.containers.errors import ApiError
from dockyard.agent.images.errors import (
    DigestMismatch,
    ImageError,
    ImageNotFound,
    ImageStoreError,
    InvalidReference,
    ManifestNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from dockyard.agent.runtime.base import (
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRuntimeError,
    InvalidConfig,
    NameConflict,
)

__all__ = ["Context", "abort_with", "status_of", "streaming", "unary"]

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")

MAX_DETAILS = 1024
"""Longest status message: one that quotes a huge request field must still fit the trailers."""

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ContainerNotFound, grpc.StatusCode.NOT_FOUND),
    (NameConflict, grpc.StatusCode.ALREADY_EXISTS),
    (ContainerNotRunning, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidConfig, grpc.StatusCode.INVALID_ARGUMENT),
    (ContainerRuntimeError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidReference, grpc.StatusCode.INVALID_ARGUMENT),
    (ImageNotFound, grpc.StatusCode.NOT_FOUND),
    (ManifestNotFound, grpc.StatusCode.NOT_FOUND),
    (RegistryUnreachable, grpc.StatusCode.UNAVAILABLE),
    (RegistryAuthError, grpc.StatusCode.PERMISSION_DENIED),
    (DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (RegistryError, grpc.StatusCode.UNAVAILABLE),  # the registry failed or refused it
    (ImageStoreError, grpc.StatusCode.INTERNAL),
    (ImageError, grpc.StatusCode.FAILED_PRECONDITION),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for an error we know, or None for a bug."""
    if isinstance(exc, ApiError):
        return exc.code, str(exc)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            message = str(exc)
            if isinstance(exc, InvalidReference):
                message = f"image: {message}"
            return code, message
    return None


async def abort_with(context: Context, exc: Exception) -> NoReturn:
    """Abort the call with the status of `exc` (INTERNAL, logged, for unknown errors)."""
    mapped = status_of(exc)
    if mapped is None:
        log.exception("api.call_failed", error=repr(exc))
        mapped = (grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
    code, message = mapped
    if len(message) > MAX_DETAILS:
        message = message[: MAX_DETAILS - 3] + "..."
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def unary(
    method: Callable[[Any, Any, Context], Awaitable[R]],
) -> Callable[[Any, Any, Context], Awaitable[R]]:
    """Turn a unary handler's errors into statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> R:
        try:
            return await method(self, request, context)
        except (ApiError, ContainerRuntimeError, ImageError, OSError) as exc:
            await abort_with(context, exc)

    return wrapper


def streaming(
    method: Callable[[Any, Any, Context], AsyncIterator[R]],
) -> Callable[[Any, Any, Context], AsyncIterator[R]]:
    """Turn a streaming handler's errors into statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> AsyncIterator[R]:
        try:
            async for item in method(self, request, context):
                yield item
        except (ApiError, ContainerRuntimeError, ImageError, OSError) as exc:
            await abort_with(context, exc)

    return wrapper
