"""``ServiceDNS``: the node's DNS server for its bridge containers (service discovery).

Swarm gives every task a resolver (its embedded DNS at 127.0.0.11) that knows the
cluster's services: with ``endpoint_mode: dnsrr`` a service's name resolves to the
addresses of its running tasks, in a rotating order (DNS round robin), and
``tasks.<service>`` always does. Dockyard does the same from the agent: one server per
node, listening on the bridge's gateway address (port 53), which is the ``nameserver``
the containers are given.

- ``NAME`` and ``tasks.NAME`` of a service answer A queries with its task addresses,
  authoritatively, rotated on each query; other types get NODATA (no IPv6 yet).
- The TTL is short (:data:`TTL`): tasks move, and a cached address goes stale quickly.
- Any other name is forwarded, unchanged, to the host's own resolvers (the
  ``nameserver`` lines of ``/etc/resolv.conf``, loopback ones included: the agent runs
  in the host's network namespace, so systemd-resolved's 127.0.0.53 is reachable for
  it, unlike for the containers), so containers keep resolving the outside world. A
  truncated UDP reply is asked again over TCP; queries that arrive over TCP are
  forwarded over TCP.
- The sockets are bound with ``IP_FREEBIND``: the agent starts its server before the
  first container makes the bridge (and with it the gateway address) exist.

Each query is answered in a task of its own (a slow upstream holds up nobody else),
with a bound on how many are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog

from dockyard.agent.network.errors import NetworkError
from dockyard.common.addresses import join_host_port

__all__ = ["DNS_PORT", "QUERY_OUTCOMES", "TTL", "ServiceDNS", "read_resolv_conf"]

log = structlog.get_logger(__name__)

QUERY_OUTCOMES = ("service", "forwarded", "failed", "refused")
"""How a query was answered: from the cluster's service names, by an upstream resolver,
SERVFAIL (no upstream answered), or refused as malformed or not a query."""

DNS_PORT = 53
TTL = 5  # seconds: task addresses change as tasks move

RESOLV_CONF = Path("/etc/resolv.conf")
MAX_IN_FLIGHT = 256
"""UDP queries being answered at once; more are dropped (the client asks again)."""
MAX_TCP_CLIENTS = 64
"""TCP connections served at once (apart from the UDP bound: idle ones cannot starve it)."""
TCP_IDLE_TIMEOUT = 10.0
"""Seconds a TCP client may keep a connection open without sending a whole query."""
UDP_PLAIN_SIZE = 512
"""The largest UDP answer to a client that does not say (RFC 1035 without EDNS)."""
OUR_PAYLOAD = 1232
"""The EDNS UDP size we advertise (DNS flag day 2020)."""
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
"""Bind an address the host does not have (yet): Linux's socket option 15 at ``SOL_IP``."""
TCP_BACKLOG = 128

_TASKS = dns.name.Name((b"tasks",))
_FORWARD_ERRORS = (dns.exception.DNSException, OSError, EOFError, ValueError)
"""What asking one upstream may raise: timeout, refusal, reset, a reply that is no DNS."""
_TRY_NEXT = frozenset({dns.rcode.SERVFAIL, dns.rcode.REFUSED})
"""Upstream answers that send us on to the next upstream (as the libc resolver does)."""


def read_resolv_conf(path: Path | None = None) -> list[tuple[str, int]]:
    """The ``nameserver`` addresses of ``/etc/resolv.conf`` (or ``path``), port 53 each.

    Blocking (a file read): call it in a thread. A missing or unreadable file gives [].
    """
    try:
        text = (path or RESOLV_CONF).read_text(errors="replace")
    except OSError as exc:
        log.warning("dns.resolvers_unreadable", path=str(path or RESOLV_CONF), error=str(exc))
        return []
    found: list[tuple[str, int]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and _is_ip(words[1]):
            found.append((words[1], DNS_PORT))
    return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _service_name(name: str) -> dns.name.Name:
    """``web``, ``web.`` and ``WEB`` are one name (dnspython compares names ignoring case).

    Raises:
        ValueError: it is no DNS name.
    """
    try:
        parsed = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"service name {name!r}: {exc}") from None
    if parsed == dns.name.root:
        raise ValueError("service name is empty")
    return parsed


@dataclass(slots=True)
class _Service:
    """A service's task addresses and where the next answer's rotation starts."""

    addresses: tuple[str, ...]
    turn: int = 0

    def rotated(self) -> list[str]:
        """The addresses, starting one further on each call (DNS round robin)."""
        start = self.turn % len(self.addresses)
        self.turn = start + 1
        return [*self.addresses[start:], *self.addresses[:start]]


class _UdpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to the server."""

    def __init__(self, server: ServiceDNS) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns.udp_error", error=str(exc))


class ServiceDNS:
    """The node's DNS server for its bridge containers: the cluster's service names, the
    rest forwarded.

    Args:
        upstreams: ``(ip, port)`` to forward to; None: the ``nameserver`` lines of
            /etc/resolv.conf (read at :meth:`start`, off the event loop), loopback ones
            included. Empty: unknown names get SERVFAIL.
        timeout: Seconds one upstream may take to answer (per transport).

    Raises:
        ValueError: an upstream is not an IP address and port.
    """

    def __init__(
        self, upstreams: Sequence[tuple[str, int]] | None = None, timeout: float = 2.0
    ) -> None:
        if upstreams is not None:
            for ip, port in upstreams:
                if not _is_ip(ip) or not 0 < port < 65536:
                    raise ValueError(f"DNS upstream {ip}:{port} is no IP address and port")
        self._configured = None if upstreams is None else tuple(upstreams)
        self._upstreams: tuple[tuple[str, int], ...] = self._configured or ()
        self._timeout = timeout
        self._records: dict[dns.name.Name, _Service] = {}
        self._scoped: dict[str, dict[dns.name.Name, _Service]] = {}
        self._isolated: frozenset[str] = frozenset()
        self._address = ""
        self._port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._queries: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backend = dns.asyncbackend.get_backend("asyncio")
        self._answered = dict.fromkeys(QUERY_OUTCOMES, 0)

    def query_counts(self) -> dict[str, int]:
        """Queries answered so far, by outcome (QUERY_OUTCOMES): the agent's metrics."""
        return dict(self._answered)

    # ----------------------------------------------------------------- records

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Replace every record: service name -> IPv4 addresses.

        Names are matched case-insensitively, with or without the trailing dot; ``NAME``
        and ``tasks.NAME`` both answer. A name may have no address (a service with no
        running task): A queries then get NOERROR with no answer. A service keeps its
        place in the rotation across calls.

        Raises:
            ValueError: a name is no DNS name or an address no IPv4 address (nothing is
                replaced then).
        """
        services: dict[dns.name.Name, _Service] = {}
        for name, addresses in records.items():
            key = _service_name(name)
            try:
                checked = tuple(str(ipaddress.IPv4Address(a)) for a in addresses)
            except ValueError as exc:
                raise ValueError(f"service {name!r}: {exc}") from None
            old = self._records.get(key)
            services[key] = _Service(checked, old.turn if old else 0)
        for key, service in list(services.items()):
            with contextlib.suppress(dns.name.NameTooLong):
                services.setdefault(_TASKS.concatenate(key), service)
        self._records = services
        log.debug("dns.records_set", services=len(records))

    def set_scoped(
        self,
        scoped: Mapping[str, Mapping[str, Sequence[str]]],
        isolated: Collection[str] = (),
    ) -> None:
        """Client address -> the only names that client may resolve (a container on
        overlay networks sees the names of its networks, nothing of the others').
        ``isolated`` clients (on ``--internal`` networks only) get no name forwarded
        upstream: REFUSED, as they have no way out to reach what it names anyway."""
        self._scoped = {
            client: {_service_name(n): _Service(tuple(a)) for n, a in records.items()}
            for client, records in scoped.items()
        }
        self._isolated = frozenset(isolated)

    def _lookup(self, name: dns.name.Name, client: str = "") -> _Service | None:
        scoped = self._scoped.get(client)
        if scoped is not None:
            return scoped.get(name)
        return self._records.get(name)

    # --------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`start`)."""
        return self._port

    async def start(self, address: str, port: int = DNS_PORT) -> None:
        """Serve UDP and TCP on ``address:port`` (port 0: one the kernel picks, the same
        for both).

        Raises:
            NetworkError: it cannot bind (the message names ``address:port`` and why).
            RuntimeError: it is serving already.
        """
        if self._udp is not None:
            raise RuntimeError(f"the DNS server is serving on {self._address}:{self._port}")
        if self._configured is None:
            self._upstreams = tuple(await asyncio.to_thread(read_resolv_conf))
        udp_sock, tcp_sock = _bind_pair(address, port)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, sock=tcp_sock, backlog=TCP_BACKLOG
            )
        except BaseException:
            transport.close()
            tcp_sock.close()
            raise
        self._udp = transport
        self._loop = loop
        self._address = address
        self._port = int(udp_sock.getsockname()[1])
        # Never forward to ourselves (the host's resolv.conf naming this address).
        self._upstreams = tuple(u for u in self._upstreams if u != (address, self._port))
        log.info(
            "dns.started",
            address=address,
            port=self._port,
            upstreams=[f"{ip}:{p}" for ip, p in self._upstreams],
        )

    async def stop(self) -> None:
        """Close both sockets and drop the queries in flight; a second call does nothing."""
        udp, tcp = self._udp, self._tcp
        if udp is None and tcp is None:
            return
        self._udp = self._tcp = None
        if tcp is not None:
            tcp.close()
        if udp is not None:
            udp.close()
        pending = [*self._queries, *self._clients]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if tcp is not None:
            await tcp.wait_closed()
        log.info("dns.stopped", address=self._address, port=self._port)

    # ------------------------------------------------------------------ serving

    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._loop is None or self._udp is None:
            return
        if len(self._queries) >= MAX_IN_FLIGHT:
            log.debug("dns.query_dropped", client=str(addr[0]))
            return
        task = self._loop.create_task(self._serve_udp(data, addr))
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _serve_udp(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = await self._answer(data, tcp=False, client=str(addr[0]))
        transport = self._udp
        if reply is not None and transport is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Queries, each with its 2-byte length, answered in turn until the client closes,
        sends something that is no DNS query, or idles."""
        task = asyncio.current_task()
        try:
            if task is None or len(self._clients) >= MAX_TCP_CLIENTS:
                log.debug("dns.tcp_refused")
                return
            self._clients.add(task)
            while await self._serve_one_tcp(reader, writer):
                pass
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve_one_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one query; False when the connection is to be closed."""
        try:
            async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                length = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return False
        peer = writer.get_extra_info("peername")
        reply = await self._answer(data, tcp=True, client=str(peer[0]) if peer else "")
        if reply is None:
            return False
        writer.write(len(reply).to_bytes(2, "big") + reply)
        try:
            await writer.drain()
        except OSError:
            return False
        return True

    async def _answer(self, data: bytes, tcp: bool, client: str = "") -> bytes | None:
        """The reply's wire format; None for something that is no query (dropped)."""
        query = _parse(data)
        if query is None:
            return None
        try:
            response, outcome = await self._respond(query, tcp, client)
            self._answered[outcome] += 1
            limit = 65535 if tcp else _udp_limit(query)
            return _render(response, limit)
        except Exception:  # a bug must not kill the server; the client times out
            log.warning("dns.query_failed", exc_info=True)
            return None

    async def _respond(
        self, query: dns.message.Message, tcp: bool, client: str = ""
    ) -> tuple[dns.message.Message, str]:
        """The response, and its outcome (one of QUERY_OUTCOMES)."""
        if query.opcode() != dns.opcode.QUERY:
            return _error(query, dns.rcode.NOTIMP), "refused"
        if len(query.question) != 1:
            return _error(query, dns.rcode.FORMERR), "refused"
        question = query.question[0]
        known = question.rdclass == dns.rdataclass.IN
        service = self._lookup(question.name, client) if known else None
        if service is None and client in self._isolated:
            return _error(query, dns.rcode.REFUSED), "refused"
        if service is None:
            forwarded = await self._forward(query, tcp)
            failed = forwarded.rcode() == dns.rcode.SERVFAIL
            return forwarded, "failed" if failed else "forwarded"
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=OUR_PAYLOAD
        )
        response.flags |= dns.flags.AA
        if question.rdtype == dns.rdatatype.A and service.addresses:
            response.answer.append(
                dns.rrset.from_text_list(
                    question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A, service.rotated()
                )
            )
        return response, "service"

    # --------------------------------------------------------------- forwarding

    async def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        """The first usable upstream answer (with the client's id), else SERVFAIL."""
        last: dns.message.Message | None = None
        for ip, port in self._upstreams:
            try:
                reply = await self._ask(query, ip, port, tcp)
            except _FORWARD_ERRORS as exc:
                log.debug(
                    "dns.upstream_failed",
                    upstream=f"{ip}:{port}",
                    error=str(exc) or type(exc).__name__,
                )
                continue
            reply.id = query.id
            if reply.rcode() not in _TRY_NEXT:
                return reply
            last = reply
        return last if last is not None else _error(query, dns.rcode.SERVFAIL)

    async def _ask(
        self, query: dns.message.Message, ip: str, port: int, tcp: bool
    ) -> dns.message.Message:
        """One upstream: over UDP, then TCP when the reply is truncated (or over TCP only,
        for a query that came over TCP)."""
        if not tcp:
            reply = await dns.asyncquery.udp(
                query,
                ip,
                timeout=self._timeout,
                port=port,
                ignore_unexpected=True,
                backend=self._backend,
            )
            if not reply.flags & dns.flags.TC:
                return reply
        return await dns.asyncquery.tcp(
            query, ip, timeout=self._timeout, port=port, backend=self._backend
        )


# ---------------------------------------------------------------- wire format


def _parse(data: bytes) -> dns.message.Message | None:
    """The query in ``data``; None (logged at debug) for garbage or a response."""
    try:
        message = dns.message.from_wire(data)
    except Exception as exc:  # untrusted bytes: whatever the parser raises
        log.debug("dns.packet_malformed", size=len(data), error=str(exc) or type(exc).__name__)
        return None
    if message.flags & dns.flags.QR:
        log.debug("dns.packet_not_query", size=len(data))
        return None
    return message


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True, our_payload=OUR_PAYLOAD)
    response.set_rcode(rcode)
    return response


def _udp_limit(query: dns.message.Message) -> int:
    """The largest UDP answer the client takes: its EDNS payload size, at least 512."""
    if query.edns >= 0:
        return max(UDP_PLAIN_SIZE, min(query.payload, 65535))
    return UDP_PLAIN_SIZE


def _render(response: dns.message.Message, limit: int) -> bytes:
    """Wire format of at most ``limit`` bytes: too big, the answer goes and TC is set (the
    client asks again over TCP).

    Records keep their order (dnspython shuffles them by default): ours carry the
    rotation, an upstream's are relayed as they came.
    """
    try:
        return response.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, want_shuffle=False)


# -------------------------------------------------------------------- sockets


def _bind_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to ``address:port`` (port 0: the same free port for
    both).

    Raises:
        NetworkError: ``address`` is no IP address, or a bind failed.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        raise NetworkError(f"DNS server address {address!r} is no IP address") from None
    attempts = 20 if port == 0 else 1
    for attempt in range(attempts):
        udp = _bind(family, socket.SOCK_DGRAM, address, port)
        bound = int(udp.getsockname()[1])
        try:
            return udp, _bind(family, socket.SOCK_STREAM, address, bound)
        except NetworkError:
            udp.close()
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def _bind(
    family: socket.AddressFamily, kind: socket.SocketKind, address: str, port: int
) -> socket.socket:
    """A non-blocking socket bound with IP_FREEBIND (TCP: SO_REUSEADDR, listening)."""
    proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetworkError(
            f"cannot serve DNS on {join_host_port(address, port)}/{proto}: {exc.strerror or exc}"
        ) from exc
    return sock
