"""Which daemon the CLI talks to, and turning gRPC failures into one clear line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dockyard.cli.deadline import remaining
from dockyard.cli.targets import Target, TargetError, TLSFiles
from dockyard.cli.targets import resolve_targets as _resolve
from dockyard.common.metadata import WARNING_KEY

if TYPE_CHECKING:  # grpc loads in the commands that call a daemon, not at startup
    import grpc

__all__ = [
    "CliError",
    "TLSFiles",
    "Target",
    "call",
    "channel",
    "describe_rpc_error",
    "is_not_a_controller",
    "is_unimplemented",
    "resolve_targets",
    "rpc_code",
    "stream",
    "tls_files",
]

T = TypeVar("T")
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dockyard: {self.message}", err=True)


def tls_files(ca: str | None, cert: str | None, key: str | None, what: str) -> TLSFiles | None:
    """`TLSFiles.from_values`, its error as a CliError."""
    try:
        return TLSFiles.from_values(ca, cert, key, what)
    except TargetError as exc:
        raise CliError(exc.message) from exc


def resolve_targets(
    hosts: tuple[str, ...],
    context_name: str | None,
    tls: TLSFiles | None = None,
    all_contexts: bool = False,
) -> list[Target]:
    """`targets.resolve_targets`, its errors as click's (see there for the rules)."""
    try:
        return _resolve(hosts, context_name, tls, all_contexts)
    except TargetError as exc:
        if exc.usage:
            raise click.UsageError(exc.message) from exc
        raise CliError(exc.message) from exc


def describe_rpc_error(exc: grpc.RpcError, target: Target, what: str) -> str:
    import grpc

    from dockyard.common.tls_errors import not_a_controller

    code = exc.code()
    details = exc.details() or ""
    # Only gRPC's own connection failure, not a daemon saying *its* backend is down.
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        lowered = details.lower()
        if target.tls and not_a_controller(details) and (target.server_name or what != "agent"):
            held = repr(target.server_name) if target.server_name else "a controller"
            return (
                f"{target.address} is not {held}: its certificate is from the cluster's CA "
                f"but does not name {held} (refused)"
            )
        if "refused" in lowered:
            reason = "connection refused"
        elif any(word in lowered for word in ("ssl", "handshake", "tls", "certificate")):
            reason = (
                f"TLS handshake failed ({details}); check the CA, certificate and key"
                if target.tls
                else "TLS handshake failed: the daemon needs TLS "
                "(--tlscacert/--tlscert/--tlskey, DOCKYARD_TLS_* or -c CONTEXT)"
            )
        elif target.tls is None and "socket closed" in lowered:
            reason = (
                f"{details} (if it speaks TLS: --tlscacert/--tlscert/--tlskey, "
                "DOCKYARD_TLS_* or -c CONTEXT)"
            )
        else:
            reason = details
        return f"cannot reach {what} at {target.address}: {reason}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{what} at {target.address} did not answer in time"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        article = "an" if what[:1] in "aeiou" else "a"
        return f"{target.address} is not {article} {what}: it does not serve this request"
    return details or code.name.lower()


@contextmanager
def channel(target: Target, controller: bool = True) -> Iterator[grpc.Channel]:
    """A channel to `target`; over TLS with `controller`, its certificate must be a
    controller's (the role, not the address, is checked: a node's is refused), else
    it must name the address dialled (an agent's API)."""
    import grpc

    # Listings of a big cluster (30,000 tasks) are larger than gRPC's 4 MiB default.
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
    if target.tls is not None and target.server_name:
        options.append(("grpc.ssl_target_name_override", target.server_name))
    elif controller and target.tls is not None:
        from dockyard.common.pki import CONTROLLER_TLS_NAME

        options.append(("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME))
    if target.tls is None:
        with grpc.insecure_channel(target.address, options=options) as chan:
            yield chan
    else:
        try:
            credentials = target.tls.credentials()
        except TargetError as exc:
            raise CliError(exc.message) from exc
        with grpc.secure_channel(target.address, credentials, options) as chan:
            yield chan


def call(
    target: Target,
    stub_factory: Callable[[grpc.Channel], Any],
    method: str,
    request: Any,
    what: str = "controller",
    timeout: float | None = DEFAULT_TIMEOUT,
    controller: bool | None = None,
) -> Any:
    """One unary call; any failure becomes a CliError naming the daemon.

    `controller` (by default: `what` is "controller") requires the server's
    certificate to be a controller's."""
    import grpc

    candidates = target.candidates()
    for index, candidate in enumerate(candidates):
        with channel(candidate, what == "controller" if controller is None else controller) as chan:
            try:
                response, rpc = getattr(stub_factory(chan), method).with_call(
                    request, timeout=remaining(timeout)
                )
                break
            except grpc.RpcError as exc:
                if index + 1 < len(candidates) and _try_next(exc):
                    continue
                raise CliError(describe_rpc_error(exc, candidate, what)) from exc
    for key, value in rpc.trailing_metadata() or ():
        if key == WARNING_KEY:
            click.echo(f"WARNING: {value}", err=True)
    return response


def stream(
    target: Target,
    stub_factory: Callable[[grpc.Channel], Any],
    method: str,
    request: Any,
    what: str = "controller",
    timeout: float | None = None,
) -> Iterator[Any]:
    """A server-streaming call, message by message; any failure becomes a CliError.
    A "controller" must present a controller's certificate (as in `call`)."""
    import grpc

    candidates = target.candidates()
    for index, candidate in enumerate(candidates):
        received = False
        with channel(candidate, what == "controller") as chan:
            try:
                for message in getattr(stub_factory(chan), method)(
                    request, timeout=remaining(timeout)
                ):
                    received = True
                    yield message
                return
            except grpc.RpcError as exc:
                if not received and index + 1 < len(candidates) and _try_next(exc):
                    continue
                raise CliError(describe_rpc_error(exc, candidate, what)) from exc


def _try_next(exc: grpc.RpcError) -> bool:
    """A failure after which the same request may go to another controller: this one
    could not be reached (nothing was sent), or it said it is not the leader."""
    import grpc

    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and (
        details.startswith("failed to connect") or details.startswith("not the leader")
    )


def rpc_code(exc: CliError) -> grpc.StatusCode | None:
    """The gRPC status behind a CliError, if a call failed."""
    import grpc

    cause = exc.__cause__
    return cause.code() if isinstance(cause, grpc.RpcError) else None


def is_not_a_controller(exc: CliError) -> bool:
    """The call failed because the server's certificate is not a controller's."""
    import grpc

    from dockyard.common.tls_errors import not_a_controller

    cause = exc.__cause__
    return isinstance(cause, grpc.RpcError) and not_a_controller(cause.details() or "")


def is_unimplemented(exc: CliError) -> bool:
    import grpc

    cause = exc.__cause__
    return isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNIMPLEMENTED
