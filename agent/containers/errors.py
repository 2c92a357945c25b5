"""Errors of the local container API, each tied to the gRPC status it maps to."""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "ApiError",
    "FailedPrecondition",
    "ImageMissing",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
]


class ApiError(Exception):
    """An error the API reports as is; `code` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(ApiError):
    """A request field is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(ApiError):
    """No such container or image."""

    code = grpc.StatusCode.NOT_FOUND


class ImageMissing(NotFound):
    """The image of a container to create is not on the node (pull it first)."""


class AlreadyExists(ApiError):
    """A name is taken."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ApiError):
    """The agent's policy does not allow what the request asks for."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(ApiError):
    """The object is in the wrong state (running, in use)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ApiError):
    """A dependency (a registry) could not be reached."""

    code = grpc.StatusCode.UNAVAILABLE
