"""Which daemon the CLI talks to, and turning gRPC failures into one clear line."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from dockyard.cli.deadline import remaining
from dockyard.common.addresses import CONTROLLER_PORT, AddressError, normalize
from dockyard.common.contexts import Context, ContextError, ContextStore
from dockyard.common.metadata import WARNING_KEY

if TYPE_CHECKING:  # grpc loads in the commands that call a daemon, not at startup
    import grpc

T = TypeVar("T")
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dockyard: {self.message}", err=True)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for mutual TLS: the cluster CA, this client's certificate and key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def from_values(
        cls, ca: str | None, cert: str | None, key: str | None, what: str
    ) -> TLSFiles | None:
        if not (ca or cert or key):
            return None
        if not (ca and cert and key):
            raise CliError(f"{what}: TLS needs all three of the CA, the certificate and the key")
        return cls(ca, cert, key)

    def credentials(self) -> Any:
        import grpc

        try:
            return grpc.ssl_channel_credentials(
                Path(self.ca).read_bytes(),
                Path(self.key).read_bytes(),
                Path(self.cert).read_bytes(),
            )
        except OSError as exc:
            raise CliError(f"cannot read TLS material: {exc}") from exc


@dataclass(frozen=True)
class Target:
    address: str
    origin: str  # "-H", "DOCKYARD_HOST" or the context's name
    tls: TLSFiles | None = None
    server_name: str = ""
    """Over TLS, the name the server's certificate must carry instead of the address (a
    node's ID, when the controller said which node is at the address)."""
    fallbacks: tuple[str, ...] = ()
    """The other controllers of a context that names several: a call goes to the next
    when the one before cannot be reached or says it is not the leader."""

    @property
    def label(self) -> str:
        """How output names this target: its context's name, else its address."""
        return self.address if self.origin in ("-H", "DOCKYARD_HOST") else self.origin

    def candidates(self) -> list[Target]:
        """This target, then one per fallback address (the order calls try them)."""
        return [self, *(replace(self, address=a, fallbacks=()) for a in self.fallbacks)]


def tls_from_env() -> TLSFiles | None:
    """DOCKYARD_TLS_CACERT/CERT/KEY, or DOCKYARD_CERT_PATH holding ca.pem, cert.pem, key.pem."""
    cert_path = os.environ.get("DOCKYARD_CERT_PATH")
    defaults = (
        [str(Path(cert_path) / name) for name in ("ca.pem", "cert.pem", "key.pem")]
        if cert_path
        else [None, None, None]
    )
    return TLSFiles.from_values(
        os.environ.get("DOCKYARD_TLS_CACERT") or defaults[0],
        os.environ.get("DOCKYARD_TLS_CERT") or defaults[1],
        os.environ.get("DOCKYARD_TLS_KEY") or defaults[2],
        "DOCKYARD_TLS_*",
    )


def resolve_targets(
    hosts: tuple[str, ...],
    context_name: str | None,
    tls: TLSFiles | None = None,
    all_contexts: bool = False,
) -> list[Target]:
    """-H wins, then DOCKYARD_HOST, then --context / DOCKYARD_CONTEXT / the current context.

    TLS material: the --tls* flags, then DOCKYARD_TLS_* / DOCKYARD_CERT_PATH, then the
    context's. As with docker, -H (or DOCKYARD_HOST) does not consult the current
    context: it could be another cluster's (and an --insecure daemon would then be
    dialled with TLS). A context named with --context or DOCKYARD_CONTEXT lends its
    TLS material to -H (`dockyard -c local -H AGENT info`: one agent of that cluster).
    Several contexts (`--context a,b`, a group, `--all-contexts`) give one target each.
    """
    if all_contexts and (hosts or context_name):
        raise click.UsageError("--all-contexts addresses every context: give no -H or --context")
    tls = tls or tls_from_env()
    addresses: list[tuple[str, str]] = []
    try:
        if hosts:
            addresses = [(normalize(h, CONTROLLER_PORT), "-H") for h in hosts]
        elif not all_contexts:
            env_host = os.environ.get("DOCKYARD_HOST")
            if env_host and not context_name:
                addresses = [(normalize(env_host, CONTROLLER_PORT), "DOCKYARD_HOST")]
    except AddressError as exc:
        raise CliError(f"-H: {exc}") from exc
    named = None if all_contexts else context_name or os.environ.get("DOCKYARD_CONTEXT")
    if addresses and (tls is not None or not named):
        return [Target(address, origin, tls) for address, origin in addresses]
    store = ContextStore()
    try:
        if all_contexts:
            contexts = store.every()
        else:
            names = [n.strip() for n in (named or store.current()).split(",") if n.strip()]
            if not names:
                raise ContextError(f"--context {named!r}: expected a context name")
            contexts = store.expand(names)
    except ContextError as exc:
        raise CliError(str(exc)) from exc
    if addresses:
        if len(contexts) != 1:
            raise click.UsageError("-H takes its TLS material from one context, not several")
        tls = tls or _context_tls(contexts[0])
        return [Target(address, origin, tls) for address, origin in addresses]
    targets = []
    for context in contexts:
        first, *others = context.hosts or [context.host]
        targets.append(
            Target(first, context.name, tls or _context_tls(context), fallbacks=tuple(others))
        )
    return targets


def _context_tls(context: Context) -> TLSFiles | None:
    if not context.tls:
        return None
    return TLSFiles.from_values(
        context.tls.get("ca"),
        context.tls.get("cert"),
        context.tls.get("key"),
        f"context {context.name}",
    )


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
        with grpc.secure_channel(target.address, target.tls.credentials(), options) as chan:
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
