"""``ServiceDNS`` on 127.0.0.1: service names, forwarding, truncation, bad packets, binding.

No namespaces or bridges: each server listens on loopback at a port of its own
(``free_port``), and dnspython's async client asks it. The upstream of a forwarding
server is another ``ServiceDNS`` holding the outside names, or a small recording
upstream (``FakeUpstream``) where the transport matters. Every server is stopped at
teardown, also when a test failed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dockyard.agent.network import dns as service_dns
from dockyard.agent.network.dns import TTL, ServiceDNS, read_resolv_conf
from dockyard.agent.network.errors import NetworkError
from tests.ports import free_port

HOST = "127.0.0.1"
WEB = ["10.87.3.2", "10.87.3.3", "10.87.3.4"]

Serve = Callable[..., Awaitable[ServiceDNS]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts servers on 127.0.0.1 (records and constructor arguments given); stops them
    all at teardown."""
    started: list[ServiceDNS] = []

    async def start(
        records: Mapping[str, Sequence[str]] | None = None, **kwargs: Any
    ) -> ServiceDNS:
        server = ServiceDNS(**kwargs)
        server.set_records(records or {})
        started.append(server)
        await server.start(HOST, free_port())
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


@pytest.fixture
async def upstream(serve: Serve) -> ServiceDNS:
    """A server holding the "outside world" names, as an upstream for the others."""
    return await serve({"example.test": ["192.0.2.7"], "old": ["192.0.2.99"]}, upstreams=[])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A UDP port where something is bound but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, free_port()))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    query: dns.message.Message | None = None,
    timeout: float = 3.0,
) -> dns.message.Message:
    """The server's reply to a query for ``name`` (or to ``query``)."""
    query = query or dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, HOST, port=port, timeout=timeout)
    return await dns.asyncquery.udp(query, HOST, port=port, timeout=timeout)


def addresses(reply: dns.message.Message) -> list[str]:
    """The A addresses of the reply, in their order."""
    return [item.to_text() for rrset in reply.answer for item in rrset]


async def raw_udp(port: int, payloads: list[bytes], timeout: float) -> bytes | None:
    """Send datagrams, return the first reply (None: no reply within ``timeout``)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        for payload in payloads:
            await loop.sock_sendall(sock, payload)
        try:
            async with asyncio.timeout(timeout):
                return await loop.sock_recv(sock, 65535)
        except TimeoutError:
            return None


class FakeUpstream:
    """An upstream that notes the transport of each query and answers ``example.test``
    with 192.0.2.1 over UDP (or an empty truncated reply, when ``truncate``) and
    192.0.2.2 over TCP; other names get NXDOMAIN."""

    def __init__(self, truncate: bool = False) -> None:
        self.truncate = truncate
        self.seen: list[str] = []
        self.port = free_port()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def reply(self, wire: bytes, transport: str) -> bytes:
        self.seen.append(transport)
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        if query.question[0].name != dns.name.from_text("example.test"):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif transport == "udp" and self.truncate:
            response.flags |= dns.flags.TC
        else:
            address = "192.0.2.1" if transport == "udp" else "192.0.2.2"
            response.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address)
            )
        return response.to_wire()

    async def start(self) -> None:
        upstream = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                self.transport.sendto(upstream.reply(data, "udp"), addr)

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                length = int.from_bytes(await reader.readexactly(2), "big")
                wire = self.reply(await reader.readexactly(length), "tcp")
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
            finally:
                writer.close()

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(Protocol, local_addr=(HOST, self.port))
        self._tcp = await asyncio.start_server(client, HOST, self.port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


MakeFake = Callable[..., Awaitable[FakeUpstream]]


@pytest.fixture
async def fake_upstream() -> AsyncIterator[MakeFake]:
    made: list[FakeUpstream] = []

    async def make(truncate: bool = False) -> FakeUpstream:
        fake = FakeUpstream(truncate)
        made.append(fake)
        await fake.start()
        return fake

    try:
        yield make
    finally:
        for fake in made:
            await fake.stop()


# ------------------------------------------------------------------ service names


async def test_a_query_gives_every_address_rotated(serve: Serve) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    replies = [await ask(server.port, "web.") for _ in range(4)]
    orders = [addresses(reply) for reply in replies]
    assert orders == [WEB, WEB[1:] + WEB[:1], WEB[2:] + WEB[:2], WEB]
    for reply in replies:
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
        assert [rrset.ttl for rrset in reply.answer] == [TTL] == [5]


@pytest.mark.parametrize("name", ["tasks.web", "WEB.", "Tasks.Web.", "web"])
async def test_tasks_name_and_any_case_answer(serve: Serve, name: str) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    reply = await ask(server.port, name)
    assert sorted(addresses(reply)) == sorted(WEB)
    assert (
        reply.question[0].name.to_text()
        == dns.message.make_query(name, "A").question[0].name.to_text()
    )


@pytest.mark.parametrize("rdtype", ["AAAA", "MX", "TXT", "ANY"])
async def test_other_types_of_a_service_get_nodata(serve: Serve, rdtype: str) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    reply = await ask(server.port, "web", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.flags & dns.flags.AA


async def test_a_service_without_tasks_gets_nodata(serve: Serve, upstream: ServiceDNS) -> None:
    server = await serve({"idle": []}, upstreams=[(HOST, upstream.port)])
    for name in ("idle", "tasks.idle"):
        reply = await ask(server.port, name)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer == []
        assert reply.flags & dns.flags.AA


def test_set_records_rejects_bad_addresses_and_names() -> None:
    server = ServiceDNS(upstreams=[])
    server.set_records({"web": WEB})
    with pytest.raises(ValueError, match="api"):
        server.set_records({"api": ["not-an-ip"]})
    with pytest.raises(ValueError, match="api"):
        server.set_records({"api": ["2001:db8::1"]})
    with pytest.raises(ValueError, match="empty"):
        server.set_records({"": WEB})
    assert set(server._records) == {dns.name.from_text(n) for n in ("web", "tasks.web")}


# -------------------------------------------------------------------- forwarding


async def test_unknown_names_are_forwarded_over_udp_and_tcp(
    serve: Serve,
    upstream: ServiceDNS,
) -> None:
    server = await serve({"web": WEB}, upstreams=[(HOST, upstream.port)])
    for tcp, qid in ((False, 4242), (True, 777)):
        query = dns.message.make_query("example.test", "A")
        query.id = qid
        reply = await ask(server.port, "", query=query, tcp=tcp)
        assert reply.id == qid
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == ["192.0.2.7"]


async def test_forwarding_keeps_the_clients_transport(
    serve: Serve,
    fake_upstream: MakeFake,
) -> None:
    fake = await fake_upstream()
    server = await serve(upstreams=[(HOST, fake.port)])
    assert addresses(await ask(server.port, "example.test")) == ["192.0.2.1"]
    assert addresses(await ask(server.port, "example.test", tcp=True)) == ["192.0.2.2"]
    assert fake.seen == ["udp", "tcp"]


async def test_a_truncated_upstream_reply_is_asked_again_over_tcp(
    serve: Serve,
    fake_upstream: MakeFake,
) -> None:
    fake = await fake_upstream(truncate=True)
    server = await serve(upstreams=[(HOST, fake.port)])
    reply = await ask(server.port, "example.test")
    assert not reply.flags & dns.flags.TC
    assert addresses(reply) == ["192.0.2.2"]
    assert fake.seen == ["udp", "tcp"]


async def test_upstream_errors_are_relayed(serve: Serve, fake_upstream: MakeFake) -> None:
    fake = await fake_upstream()
    server = await serve(upstreams=[(HOST, fake.port)])
    reply = await ask(server.port, "nowhere.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert fake.seen == ["udp"]


async def test_a_servfail_upstream_sends_on_to_the_next(
    serve: Serve,
    upstream: ServiceDNS,
    fake_upstream: MakeFake,
) -> None:
    fake = await fake_upstream()
    server = await serve(upstreams=[(HOST, upstream.port), (HOST, fake.port)])
    assert addresses(await ask(server.port, "example.test")) == ["192.0.2.7"]
    assert fake.seen == []
    # `upstream` knows no upstream: SERVFAIL for this name; the fake says NXDOMAIN.
    assert (await ask(server.port, "nowhere.test")).rcode() == dns.rcode.NXDOMAIN
    assert fake.seen == ["udp"]
    only_failing = await serve(upstreams=[(HOST, upstream.port)])
    assert (await ask(only_failing.port, "nowhere.test")).rcode() == dns.rcode.SERVFAIL


async def test_the_next_upstream_answers_when_one_is_down(
    serve: Serve,
    upstream: ServiceDNS,
    blackhole: int,
) -> None:
    server = await serve(upstreams=[(HOST, blackhole), (HOST, upstream.port)], timeout=0.3)
    assert addresses(await ask(server.port, "example.test")) == ["192.0.2.7"]


async def test_servfail_when_every_upstream_is_down(serve: Serve, blackhole: int) -> None:
    server = await serve(upstreams=[(HOST, free_port()), (HOST, blackhole)], timeout=0.5)
    began = time.monotonic()
    reply = await ask(server.port, "example.test")
    took = time.monotonic() - began
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert 0.4 < took < 2.0, took


async def test_servfail_at_once_without_upstreams(serve: Serve) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    began = time.monotonic()
    reply = await ask(server.port, "example.test")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - began < 0.3


async def test_set_records_replaces_every_record(serve: Serve, upstream: ServiceDNS) -> None:
    server = await serve({"old": ["10.87.3.9"]}, upstreams=[(HOST, upstream.port)])
    assert addresses(await ask(server.port, "old")) == ["10.87.3.9"]
    server.set_records({"new": ["10.87.3.10"]})
    assert addresses(await ask(server.port, "new")) == ["10.87.3.10"]
    reply = await ask(server.port, "old")
    assert addresses(reply) == ["192.0.2.99"]  # forwarded: the upstream's record


async def test_a_slow_upstream_holds_up_no_other_query(serve: Serve, blackhole: int) -> None:
    server = await serve({"web": WEB}, upstreams=[(HOST, blackhole)], timeout=0.8)
    forwarded = asyncio.create_task(ask(server.port, "example.test"))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    assert sorted(addresses(await ask(server.port, "web"))) == sorted(WEB)
    assert time.monotonic() - began < 0.4
    assert not forwarded.done()
    assert (await forwarded).rcode() == dns.rcode.SERVFAIL


async def test_queries_beyond_the_bound_are_dropped(
    serve: Serve,
    blackhole: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_dns, "MAX_IN_FLIGHT", 2)
    server = await serve({"web": WEB}, upstreams=[(HOST, blackhole)], timeout=5)
    pending = [asyncio.create_task(ask(server.port, "example.test", timeout=6)) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        with pytest.raises(dns.exception.Timeout):
            await ask(server.port, "web", timeout=0.3)
        assert sorted(addresses(await ask(server.port, "web", tcp=True))) == sorted(WEB)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def test_read_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# generated\nsearch example.test\nnameserver 127.0.0.53\n"
        "nameserver   10.0.0.2  # office\nnameserver bogus\noptions edns0\n"
        "nameserver 2001:db8::53\n"
    )
    assert read_resolv_conf(path) == [("127.0.0.53", 53), ("10.0.0.2", 53), ("2001:db8::53", 53)]
    assert read_resolv_conf(tmp_path / "missing") == []


async def test_upstreams_default_to_the_hosts_resolvers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\n")
    monkeypatch.setattr(service_dns, "RESOLV_CONF", path)
    server = ServiceDNS()
    try:
        await server.start(HOST, free_port())
        assert server._upstreams == (("127.0.0.53", 53), ("10.0.0.2", 53))
    finally:
        await server.stop()


# --------------------------------------------------------------- size and garbage


async def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(serve: Serve) -> None:
    many = [f"10.87.{i // 250}.{i % 250 + 1}" for i in range(100)]
    server = await serve({"big": many}, upstreams=[])
    reply = await ask(server.port, "big")
    assert reply.flags & dns.flags.TC
    assert reply.answer == []
    reply = await ask(server.port, "big", tcp=True)
    assert not reply.flags & dns.flags.TC
    assert sorted(addresses(reply)) == sorted(many)
    edns = dns.message.make_query("big", "A", use_edns=0, payload=4096)
    reply = await ask(server.port, "", query=edns)
    assert not reply.flags & dns.flags.TC
    assert len(addresses(reply)) == 100


async def test_formerr_and_notimp(serve: Serve) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    empty = dns.message.Message(id=99)
    reply = dns.message.from_wire(await raw_udp(server.port, [empty.to_wire()], 2) or b"")
    assert (reply.id, reply.rcode()) == (99, dns.rcode.FORMERR)
    notify = dns.message.make_query("web", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(await raw_udp(server.port, [notify.to_wire()], 2) or b"")
    assert (reply.id, reply.rcode()) == (notify.id, dns.rcode.NOTIMP)


async def test_garbage_does_not_kill_the_server(serve: Serve) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    answer = dns.message.make_response(dns.message.make_query("web", "A")).to_wire()
    assert (
        await raw_udp(
            server.port, [b"", b"\x00", b"garbage!" * 10, b"\xff" * 12 + b"\x01", answer], 0.3
        )
        is None
    )
    for junk in (b"\x00\x05hello", b"\x00\x00", b"\x00\x10short"):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(junk)
            await writer.drain()
            if junk == b"\x00\x10short":
                writer.write_eof()
            async with asyncio.timeout(2):
                assert await reader.read() == b""  # closed by the server
        finally:
            writer.close()
            await writer.wait_closed()
    assert sorted(addresses(await ask(server.port, "web"))) == sorted(WEB)
    assert sorted(addresses(await ask(server.port, "web", tcp=True))) == sorted(WEB)


async def test_several_queries_on_one_tcp_connection(serve: Serve) -> None:
    server = await serve({"web": WEB, "api": ["10.87.3.20"]}, upstreams=[])
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        for name in ("web", "api", "tasks.api"):
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        got = []
        for _ in range(3):
            length = int.from_bytes(await reader.readexactly(2), "big")
            got.append(dns.message.from_wire(await reader.readexactly(length)))
    finally:
        writer.close()
        await writer.wait_closed()
    assert [len(addresses(reply)) for reply in got] == [3, 1, 1]


# ------------------------------------------------------------------------ binding


async def test_start_binds_an_address_the_host_lacks() -> None:
    server = ServiceDNS(upstreams=[])
    port = free_port()
    try:
        await server.start("10.255.254.1", port)  # IP_FREEBIND: no such address here
        assert server.port == port
    finally:
        await server.stop()


async def test_start_picks_one_port_for_both_when_given_zero() -> None:
    server = ServiceDNS(upstreams=[])
    server.set_records({"web": WEB})
    try:
        await server.start(HOST, 0)
        assert server.port > 0
        assert addresses(await ask(server.port, "web")) == WEB
        assert len(addresses(await ask(server.port, "web", tcp=True))) == 3
    finally:
        await server.stop()


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
async def test_start_on_a_port_in_use_raises_network_error(kind: socket.SocketKind) -> None:
    port = free_port()
    server = ServiceDNS(upstreams=[])
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind((HOST, port))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        with pytest.raises(NetworkError, match=f"127.0.0.1:{port}.*in use"):
            await server.start(HOST, port)
    try:
        await server.start(HOST, port)  # nothing of the failed start holds the port
    finally:
        await server.stop()


async def test_start_on_no_address_raises_network_error() -> None:
    with pytest.raises(NetworkError, match="no IP address"):
        await ServiceDNS(upstreams=[]).start("gateway", free_port())


async def test_stop_twice_and_stop_unstarted(serve: Serve) -> None:
    server = await serve({"web": WEB}, upstreams=[])
    await server.stop()
    await server.stop()
    await ServiceDNS(upstreams=[]).stop()
    with pytest.raises(dns.exception.Timeout):
        await ask(server.port, "web", timeout=0.3)


async def test_queries_are_counted_by_outcome(serve: Serve, upstream: ServiceDNS) -> None:
    """What the agent's `dockyard_dns_queries_total{outcome}` reads."""
    from dockyard.agent.metrics.node import DnsCollector

    server = await serve({"web": ["10.0.0.2"]}, upstreams=[(HOST, upstream.port)])
    lonely = await serve({}, upstreams=[])
    assert server.query_counts() == {"service": 0, "forwarded": 0, "failed": 0, "refused": 0}
    await ask(server.port, "web")
    await ask(server.port, "web", tcp=True)
    await ask(server.port, "example.test")
    await ask(lonely.port, "example.test")  # no upstream: SERVFAIL
    notify = dns.message.make_query("web", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    await ask(server.port, "", query=notify)
    assert server.query_counts() == {"service": 2, "forwarded": 1, "failed": 0, "refused": 1}
    assert lonely.query_counts()["failed"] == 1
    samples = {
        s.labels["outcome"]: s.value
        for f in DnsCollector(server.query_counts).collect()
        for s in f.samples
    }
    assert samples == {"service": 2, "forwarded": 1, "failed": 0, "refused": 1}
