"""Who is calling, and may they: the peer certificate to an identity, roles to methods.

Both daemons use this. TLS has already checked that the peer's certificate chains
to the cluster CA and is within its validity (grpc refuses the handshake
otherwise); this interceptor reads role (OU) and ID (CN) from it and applies:

- `admin` and `controller`: every method;
- `read-only`: methods named Get* or List* (GetInfo, GetVersion included), but
  not the join tokens' or the certificates' (TOKEN_METHODS);
- `node`: only its dispatcher session, its own certificate's renewal, and other
  agents' image blobs (Peer.FetchBlob);
- a serial on the revocation list: UNAUTHENTICATED, also in the middle of a stream:
  a streaming call (an agent's session, `logs -f`, `exec`, a peer's blob) checks the
  list again at every message it sends, and ends when its certificate is revoked.

grpc.aio interceptors cannot see the peer, so the interceptor wraps the method
handler and checks the servicer context before the method runs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any

import grpc
import structlog

from dockyard.common.pki import ADMIN, CONTROLLER, NODE, READ_ONLY, Identity, PKIError, identity_of
from dockyard.common.tls_errors import not_a_controller

__all__ = [
    "NODE_METHODS",
    "TOKEN_METHODS",
    "AuthInterceptor",
    "allowed",
    "not_a_controller",
    "peer_identity",
]

log = structlog.get_logger(__name__)

NODE_METHODS = frozenset(
    {
        "/dockyard.v1.Dispatcher/Session",
        "/dockyard.v1.Dispatcher/Leader",
        # A node's standalone containers on attachable networks (its own only).
        "/dockyard.v1.Dispatcher/AttachNetwork",
        "/dockyard.v1.Dispatcher/DetachNetwork",
        "/dockyard.v1.Dispatcher/PruneAttachments",
        "/dockyard.v1.NodeCA/RenewNodeCertificate",
        "/dockyard.v1.Peer/FetchBlob",  # served by agents: other nodes fetch image layers
    }
)
TOKEN_METHODS = frozenset(
    {
        "/dockyard.v1.Control/CreateJoinToken",
        "/dockyard.v1.Control/ListJoinTokens",
        "/dockyard.v1.Control/RotateJoinTokens",
        "/dockyard.v1.NodeCA/ListCertificates",  # admin only, as tokens are
    }
)


@functools.lru_cache(maxsize=1024)
def _identity_from_pem(pem: bytes) -> Identity | None:
    try:
        return identity_of(pem)
    except PKIError:
        return None


def peer_identity(context: Any) -> Identity | None:
    """The identity in the peer's verified certificate; None without one (or without TLS)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    return _identity_from_pem(bytes(pems[0])) if pems else None


def allowed(identity: Identity, method: str) -> bool:
    """Whether `identity` may call the full gRPC method name `method`."""
    if identity.role in (ADMIN, CONTROLLER):
        return True
    if identity.role == NODE:
        return method in NODE_METHODS
    if identity.role == READ_ONLY:
        name = method.rsplit("/", 1)[-1]
        return name.startswith(("Get", "List")) and method not in TOKEN_METHODS
    return False


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticate by peer certificate and authorize by role, on every method.

    Args:
        revoked: whether a serial (hex) is revoked.
        public: methods callable without a client certificate (the join port's).
    """

    def __init__(
        self,
        revoked: Callable[[str], bool] = lambda serial: False,
        public: Collection[str] = (),
    ) -> None:
        self._revoked = revoked
        self._public = frozenset(public)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._public:
            return handler
        return _wrap(
            handler,
            functools.partial(self._check, method),
            functools.partial(self._recheck, method),
        )

    async def _recheck(self, method: str, context: Any) -> None:
        """In a stream: end it once the caller's certificate is revoked."""
        identity = peer_identity(context)
        if identity is not None and self._revoked(identity.serial):
            log.warning("auth.revoked_stream", method=method, role=identity.role, id=identity.id)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"certificate {identity.serial} ({identity.role} {identity.id}) is revoked",
            )

    async def _check(self, method: str, context: Any) -> None:
        identity = peer_identity(context)
        if identity is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate from this cluster's CA is required",
            )
        assert identity is not None
        if self._revoked(identity.serial):
            log.warning("auth.revoked", method=method, role=identity.role, id=identity.id)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"certificate {identity.serial} ({identity.role} {identity.id}) is revoked",
            )
        if not allowed(identity, method):
            log.warning("auth.denied", method=method, role=identity.role, id=identity.id)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity.role} {identity.id!r} may not call {method.rsplit('/', 1)[-1]}",
            )


def _wrap(handler: Any, check: Callable[[Any], Any], recheck: Callable[[Any], Any]) -> Any:
    """The same handler, with `check(context)` awaited before the method runs and, in a
    response stream, `recheck(context)` before every message after the first."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await check(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, check, recheck), **kwargs
        )
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, check, recheck), **kwargs
    )


def _streaming(
    inner: Callable[[Any, Any], Any], check: Callable[[Any], Any], recheck: Callable[[Any], Any]
) -> Any:
    async def behavior(request: Any, context: Any) -> Any:
        await check(context)
        result = inner(request, context)
        if inspect.isasyncgen(result):
            first = True
            try:
                async for response in result:
                    if not first:
                        await recheck(context)
                    first = False
                    yield response
            finally:
                await result.aclose()
        else:
            await result

    return behavior
