"""The Control API's list reads on a port of their own (`--read-listen`), answered by
a thread pool from a view's published snapshot: a read never waits for an event loop.
The controller runs it in its reader process (controller/reader.py), whose own etcd
watch keeps the view, so that no read shares a GIL with the leader's control loops.

`dockyard.v1.Control/ListServices` and `/ListNodes` are served here exactly as on the
main port (same messages, same pages, same roles: mutual TLS unless --insecure). A
read first waits (at most OWN_WRITE_WAIT) for the snapshot to hold the controller's
own last write (`own_write`: shared with the reader process), so a caller sees what it
just wrote through that controller; when the view lags behind it, the nodes and
services are read from etcd on this thread (a blocking client), the task counts kept
from the snapshot. Others' writes are seen as far as the view has got: it does not
ask etcd for its current revision (the main port does, waiting READ_WAIT for it).
Until the view's first list it answers UNAVAILABLE.

grpc.aio runs every handler (sync ones too, through its executor) on its event
loop's turns, and one port belongs to one server: hence a port of its own, with
grpc's synchronous server, whose polling and handler threads are its own; calls
beyond MAX_CONCURRENT_CALLS are refused at once (no queue grows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from dockyard.common.authz import allowed, peer_identity
from dockyard.common.validation import ValidationError
from dockyard.controller.snapshot import ReadSnapshot, SnapshotBoard, list_nodes, list_services
from dockyard.controller.store import NODES, SERVICES, Kind, StoreError
from dockyard.v1.control_pb2 import ListNodesRequest, ListServicesRequest
from dockyard.v1.types_pb2 import Node

__all__ = [
    "MAX_CONCURRENT_CALLS",
    "OWN_WRITE_WAIT",
    "READ_METHODS",
    "WORKERS",
    "ReadServer",
    "ReadUnavailable",
    "slow_read",
]

log = structlog.get_logger(__name__)

SERVICE = "dockyard.v1.Control"
READ_METHODS = (f"/{SERVICE}/ListServices", f"/{SERVICE}/ListNodes")
# Seconds a read waits for the snapshot to hold this controller's own last write
# before it reads the records from etcd itself.
OWN_WRITE_WAIT = 0.05
WORKERS = 4
# A read slower than this (seconds, in the handler) is logged with where its time went.
SLOW_READ = 0.1
# Calls in progress (running or waiting for a worker) before more are refused.
MAX_CONCURRENT_CALLS = 64
# A list request is a few filters: anything bigger is refused before it is parsed.
MAX_REQUEST_BYTES = 64 * 1024

Request = TypeVar("Request", bound=Message)


class ReadServer:
    """Serves the list reads from `board` on threads of its own.

    Args:
        board: where the leader's view publishes its snapshots.
        own_write: this controller's last write's revision (read-your-writes).
        patch: applied to each listed node (the leader's live heartbeat).
        leader_address: the leader's address ("": none elected), named when no view is
            loaded yet; None when this process cannot tell (the reader process).
        revoked: whether a certificate serial (hex) is revoked.
        records: every record of a kind read from etcd now, blocking (used when the
            snapshot lags this controller's own last write).
    """

    def __init__(
        self,
        board: SnapshotBoard,
        own_write: Callable[[], int],
        patch: Callable[[Node], Node],
        leader_address: Callable[[], str | None],
        revoked: Callable[[str], bool] = lambda serial: False,
        records: Callable[[Kind[Any]], tuple[list[Any], int]] | None = None,
    ) -> None:
        self._board = board
        self._records = records
        self._records_lock = threading.Lock()
        self._own_write = own_write
        self._patch = patch
        self._leader_address = leader_address
        self._revoked = revoked
        self._server: grpc.Server | None = None
        self._tls = True

    def start(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Listen on `address` (mutual TLS with `credentials`, else plaintext); the
        bound port, 0 when it cannot be bound."""
        server = grpc.server(
            ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="read-api"),
            handlers=[self._handlers()],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ],
            # Calls beyond these get RESOURCE_EXHAUSTED at once: no queue of waiting
            # calls grows, however many clients (or slow ones) there are.
            maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS,
        )
        self._tls = credentials is not None
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            port = 0
        if port:
            server.start()
            self._server = server
            log.info("read_api.listening", address=address, port=port)
        return port

    def stop(self, grace: float) -> None:
        """Stop serving (blocking until the calls in flight end, at most `grace` s)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ListServices": self._unary(
                    "ListServices",
                    ListServicesRequest,
                    lambda request, snap: list_services(snap, request),
                ),
                "ListNodes": self._unary(
                    "ListNodes",
                    ListNodesRequest,
                    lambda request, snap: list_nodes(snap, request, self._patch),
                ),
            },
        )

    def _unary(
        self,
        name: str,
        request_type: type[Request],
        answer: Callable[[Request, ReadSnapshot], Message],
    ) -> grpc.RpcMethodHandler[Request, Message]:
        method = f"/{SERVICE}/{name}"

        def handle(request: Request, context: grpc.ServicerContext) -> Message:
            started = time.perf_counter()
            if self._tls:
                self._authorize(method, context)
            try:
                snapshot, from_etcd = self.current()
            except ReadUnavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                raise  # not reached: abort raises
            fresh = time.perf_counter()
            try:
                return answer(request, snapshot)
            except ValidationError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise  # not reached: abort raises
            finally:
                slow_read(name, started, fresh, from_etcd)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        )

    def current(self) -> tuple[ReadSnapshot, bool]:
        """The snapshot a read answers from (blocking: call it on a read thread), and
        whether its nodes and services were read from etcd (the view lags this
        controller's own last write). ReadUnavailable before the view's first list, or
        when etcd cannot be read. Also the reader's HTTP port's (controller/read_http.py)."""
        own_write = self._own_write()
        snapshot = self._board.wait_for(own_write, OWN_WRITE_WAIT)
        if snapshot is None:
            raise ReadUnavailable(self._not_leading())
        from_etcd = snapshot.revision < own_write and self._records is not None
        return (self._fresh(snapshot) if from_etcd else snapshot), from_etcd

    def _fresh(self, snapshot: ReadSnapshot) -> ReadSnapshot:
        """The snapshot with the nodes and services read from etcd now (this thread's
        blocking client), its counts kept: the view lags this controller's own write."""
        assert self._records is not None
        try:
            with self._records_lock:
                (nodes, _), (services, revision) = self._records(NODES), self._records(SERVICES)
        except StoreError as exc:
            raise ReadUnavailable(str(exc)) from exc
        return ReadSnapshot.of(
            revision,
            {n.id: n for n in nodes},
            {s.id: s for s in services},
            snapshot.running,
            snapshot.succeeded,
        )

    def _not_leading(self) -> str:
        leader = self._leader_address()
        if leader is None:  # the reader process: its own view's first list
            return "this controller's read view is not loaded yet: retry, or use the main port"
        where = f"the leader is at {leader}" if leader else "no leader is elected yet"
        return f"not the leader: {where} (this controller's view is not loaded yet)"

    def _authorize(self, method: str, context: grpc.ServicerContext) -> None:
        """The caller's certificate, checked as the main port's AuthInterceptor does."""
        identity = peer_identity(context)
        if identity is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate from this cluster's CA is required",
            )
        assert identity is not None
        if self._revoked(identity.serial):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"certificate {identity.serial} ({identity.role} {identity.id}) is revoked",
            )
        if not allowed(identity, method):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity.role} {identity.id!r} may not call {method.rsplit('/', 1)[-1]}",
            )


class ReadUnavailable(Exception):
    """No snapshot to answer from (the view is not loaded, or etcd cannot be read)."""


def slow_read(method: str, started: float, fresh: float, from_etcd: bool) -> None:
    """Log a read slower than SLOW_READ with where its time went."""
    done = time.perf_counter()
    if done - started > SLOW_READ:
        log.warning(
            "read_api.slow",
            method=method,
            seconds=round(done - started, 3),
            snapshot=round(fresh - started, 3),
            from_etcd=from_etcd,
            answering=round(done - fresh, 3),
        )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
