"""Docker's errors: an HTTP status and a ``{"message": ...}`` body, as its clients expect.

Handlers raise :class:`DockerApiError` (or one of the helpers); the server's error
middleware renders it. The agent's own API errors (``containers/errors.py``) map onto
Docker's statuses with :func:`from_api_error`.
"""

from __future__ import annotations

from dockyard.agent.containers.errors import (
    AlreadyExists,
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

__all__ = [
    "DockerApiError",
    "bad_request",
    "conflict",
    "forbidden",
    "from_api_error",
    "not_found",
    "not_implemented",
]


class DockerApiError(Exception):
    """An error answered as ``status`` with Docker's JSON body ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> DockerApiError:
    """400: the request is malformed (the message names what)."""
    return DockerApiError(400, message)


def forbidden(message: str) -> DockerApiError:
    """403: allowed to nobody here (a service task's container, the privilege policy)."""
    return DockerApiError(403, message)


def not_found(message: str) -> DockerApiError:
    """404: ``No such container: X``, ``No such image: X``."""
    return DockerApiError(404, message)


def conflict(message: str) -> DockerApiError:
    """409: a name in use, a running container removed without force."""
    return DockerApiError(409, message)


def not_implemented(message: str) -> DockerApiError:
    """501: an endpoint or option Dockyard does not serve."""
    return DockerApiError(501, message)


_STATUS: list[tuple[type[ApiError], int]] = [
    (InvalidArgument, 400),
    (NotFound, 404),
    (AlreadyExists, 409),
    (FailedPrecondition, 409),
    (PermissionDenied, 403),
    (Unavailable, 503),
]


def from_api_error(error: ApiError, not_found_message: str = "") -> DockerApiError:
    """The Docker error for an error of the agent's container service.

    Args:
        not_found_message: What a 404 says instead of the service's text (Docker's
            clients look for ``No such container``).
    """
    for kind, status in _STATUS:
        if isinstance(error, kind):
            message = not_found_message if status == 404 and not_found_message else str(error)
            return DockerApiError(status, message)
    return DockerApiError(500, str(error))
