"""Which daemon the CLI talks to, and turning gRPC failures into one clear line."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dockyard.cli.contexts import ContextError, ContextStore
from dockyard.common.addresses import CONTROLLER_PORT, AddressError, normalize

if TYPE_CHECKING:  # grpc loads in the commands that call a daemon, not at startup
    import grpc

T = TypeVar("T")
DEFAULT_TIMEOUT = 15.0


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dockyard: {self.message}", err=True)


@dataclass(frozen=True)
class Target:
    address: str
    origin: str  # "-H", "DOCKYARD_HOST" or the context's name


def resolve_targets(hosts: tuple[str, ...], context_name: str | None) -> list[Target]:
    """-H wins, then DOCKYARD_HOST, then --context / DOCKYARD_CONTEXT / the current context."""
    try:
        if hosts:
            return [Target(normalize(h, CONTROLLER_PORT), "-H") for h in hosts]
        env_host = os.environ.get("DOCKYARD_HOST")
        if env_host and not context_name:
            return [Target(normalize(env_host, CONTROLLER_PORT), "DOCKYARD_HOST")]
    except AddressError as exc:
        raise CliError(f"-H: {exc}") from exc
    store = ContextStore()
    try:
        name = context_name or os.environ.get("DOCKYARD_CONTEXT") or store.current()
        context = store.get(name)
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    return [Target(context.host, context.name)]


def describe_rpc_error(exc: grpc.RpcError, target: Target, what: str) -> str:
    import grpc

    code = exc.code()
    details = exc.details() or ""
    # Only gRPC's own connection failure, not a daemon saying *its* backend is down.
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        reason = "connection refused" if "refused" in details.lower() else details
        return f"cannot reach {what} at {target.address}: {reason}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{what} at {target.address} did not answer in time"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        article = "an" if what[:1] in "aeiou" else "a"
        return f"{target.address} is not {article} {what}: it does not serve this request"
    return details or code.name.lower()


@contextmanager
def channel(target: Target) -> Iterator[grpc.Channel]:
    import grpc

    with grpc.insecure_channel(target.address) as chan:
        yield chan


def call(
    target: Target,
    stub_factory: Callable[[grpc.Channel], Any],
    method: str,
    request: Any,
    what: str = "controller",
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Any:
    """One unary call; any failure becomes a CliError naming the daemon."""
    import grpc

    with channel(target) as chan:
        try:
            return getattr(stub_factory(chan), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CliError(describe_rpc_error(exc, target, what)) from exc


def stream(
    target: Target,
    stub_factory: Callable[[grpc.Channel], Any],
    method: str,
    request: Any,
    what: str = "controller",
    timeout: float | None = None,
) -> Iterator[Any]:
    """A server-streaming call, message by message; any failure becomes a CliError."""
    import grpc

    with channel(target) as chan:
        try:
            yield from getattr(stub_factory(chan), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CliError(describe_rpc_error(exc, target, what)) from exc


def rpc_code(exc: CliError) -> grpc.StatusCode | None:
    """The gRPC status behind a CliError, if a call failed."""
    import grpc

    cause = exc.__cause__
    return cause.code() if isinstance(cause, grpc.RpcError) else None


def is_unimplemented(exc: CliError) -> bool:
    import grpc

    cause = exc.__cause__
    return isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED
