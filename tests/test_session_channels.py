"""An agent's session channels do not inherit another channel's connection backoff.

gRPC shares subchannels between channels of one process by default: a channel still
open to a controller that went down keeps backing off, and a new channel to the same
address would fail at once with that stale error although the controller is back,
which once kept an agent away from a re-elected controller past its node grace.
"""

from __future__ import annotations

import grpc
import pytest

from dockyard.agent.session import CHANNEL_OPTIONS
from tests.ports import free_port

METHOD = "/dockyard.test.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _call(channel: grpc.aio.Channel, timeout: float = 2.0) -> bytes:
    stub = channel.unary_unary(METHOD)
    answer: bytes = await stub(b"ping", timeout=timeout)
    return answer


async def test_a_new_channel_reaches_a_controller_back_at_the_same_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    lingering = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    server = grpc.aio.server()
    try:
        for _ in range(3):  # the lingering channel's connection now backs off
            with pytest.raises(grpc.aio.AioRpcError):
                await _call(lingering, timeout=0.5)
        handler = grpc.unary_unary_rpc_method_handler(_echo)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("dockyard.test.Echo", {"Echo": handler})]
        )
        server.add_insecure_port(address)
        await server.start()
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as fresh:
            assert await _call(fresh) == b"ping"
    finally:
        await lingering.close()
        await server.stop(None)
