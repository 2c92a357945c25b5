"""Finding a container for a handler, and the agent's errors in Docker's words.

Every container endpoint (attach and exec too) calls :func:`find_container` and wraps
calls into the container service in :func:`docker_errors`, so a missing container is
404 ``No such container: X`` everywhere, as Docker's clients match it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dockyard.agent.containers.errors import (
    AlreadyExists,
    ApiError,
    ImageMissing,
    InvalidArgument,
    NotFound,
)
from dockyard.agent.containers.service import ContainerView
from dockyard.agent.dockerapi.container_view import is_task
from dockyard.agent.dockerapi.context import DockerApiContext
from dockyard.agent.dockerapi.errors import DockerApiError, forbidden, from_api_error

__all__ = ["check_not_task", "docker_error", "docker_errors", "find_container"]


def docker_error(error: ApiError, ref: str = "") -> DockerApiError:
    """A container service's error as Docker's (`ref` names the container)."""
    if isinstance(error, ImageMissing):
        return DockerApiError(404, f"No such image: {error}")
    if isinstance(error, NotFound):
        return DockerApiError(404, f"No such container: {ref}" if ref else str(error))
    if isinstance(error, AlreadyExists):
        return DockerApiError(409, f"Conflict. {error}")
    if isinstance(error, InvalidArgument):
        return DockerApiError(400, str(error))
    return from_api_error(error)


@contextmanager
def docker_errors(ref: str = "") -> Iterator[None]:
    """Raise the container service's errors as Docker's (`ref` names the container)."""
    try:
        yield
    except ApiError as exc:
        raise docker_error(exc, ref) from exc


async def find_container(ctx: DockerApiContext, ref: str) -> ContainerView:
    """The container `ref` names (id, unique id prefix or name); 404 when none."""
    service = ctx.require_containers()
    with docker_errors(ref):
        return await service.inspect(ref)


def check_not_task(view: ContainerView, action: str) -> None:
    """403 for a service task's container: the controller owns it (as Swarm's task
    containers are changed through their service)."""
    if is_task(view.info):
        raise forbidden(
            f"cannot {action} container {view.info.name}: it runs a task of a dockyard "
            "service; change the service instead (dockyard service update/scale/rm)"
        )
