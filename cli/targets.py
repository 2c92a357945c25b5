"""Which daemon a command addresses: -H, DOCKYARD_HOST, contexts, and the TLS material.

Free of click and grpc, so that the fast path (`cli/fast.py`) resolves targets by
the very rules the full CLI uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dockyard.common.addresses import CONTROLLER_PORT, AddressError, normalize
from dockyard.common.contexts import Context, ContextError, ContextStore


class TargetError(Exception):
    """The targets cannot be resolved; `usage`: the command line is wrong."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


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
            raise TargetError(f"{what}: TLS needs all three of the CA, the certificate and the key")
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
            raise TargetError(f"cannot read TLS material: {exc}") from exc


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
        raise TargetError(
            "--all-contexts addresses every context: give no -H or --context", usage=True
        )
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
        raise TargetError(f"-H: {exc}") from exc
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
        raise TargetError(str(exc)) from exc
    if addresses:
        if len(contexts) != 1:
            raise TargetError("-H takes its TLS material from one context, not several", usage=True)
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
