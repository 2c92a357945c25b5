"""Measure the agent's DNS server (agent/network/dns.py) on loopback, against a baseline.

    /work/venv/bin/python tests/network/bench_dns.py [--queries 2000] [--concurrency 32]

Two servers in this process: an "upstream" (a ServiceDNS that holds `example.test`, in
the role of the host's resolver) and the agent's server, which holds 200 services of 3
addresses each and forwards everything else to that upstream. A dnspython client asks,
over UDP:

1. one by one, the median and p99 latency of (a) a service name the agent answers,
   (b) `example.test` forwarded through the agent, (c) `example.test` asked of the
   upstream directly: the baseline. Each name has 3 addresses, so (a) and (c) differ
   only in how many names the server holds (200 against 1), and (b) adds one hop;
2. with `--concurrency` queries in flight, the queries per second of the same three.

The client runs in the same process and on the same 2 cores as the servers, so the
absolute numbers are a floor of what a container would see; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dockyard.agent.network.dns import ServiceDNS
from tests.ports import free_port

Ask = Callable[[], Awaitable[float]]


def asker(name: str, port: int) -> Ask:
    async def ask() -> float:
        query = dns.message.make_query(name, "A")
        start = time.perf_counter()
        answer = await dns.asyncquery.udp(query, "127.0.0.1", timeout=2.0, port=port)
        elapsed = time.perf_counter() - start
        if not answer.answer:
            raise AssertionError(f"{name}: no answer")
        return elapsed

    return ask


async def latency(ask: Ask, count: int) -> tuple[float, float]:
    """Median and p99 in milliseconds of ``count`` queries one after another."""
    times = sorted([await ask() for _ in range(count)])
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


async def throughput(ask: Ask, count: int, concurrency: int) -> float:
    """Queries per second with ``concurrency`` in flight."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await ask()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


async def run(queries: int, concurrency: int) -> None:
    upstream = ServiceDNS(upstreams=[])
    upstream.set_records({"example.test": ["192.0.2.7", "192.0.2.8", "192.0.2.9"]})
    await upstream.start("127.0.0.1", free_port())
    agent = ServiceDNS(upstreams=[("127.0.0.1", upstream.port)])
    agent.set_records(
        {f"svc{i}": [f"10.87.{i % 250}.{j + 2}" for j in range(3)] for i in range(200)}
    )
    await agent.start("127.0.0.1", free_port())
    cases = {
        "service name, answered by the agent": asker("svc42", agent.port),
        "other name, forwarded by the agent": asker("example.test", agent.port),
        "the same name, asked of the upstream": asker("example.test", upstream.port),
    }
    try:
        for ask in cases.values():  # warm up
            await ask()
        print(f"1. latency, {queries} queries one by one (median / p99):")
        results = {label: await latency(ask, queries) for label, ask in cases.items()}
        baseline = results["the same name, asked of the upstream"][0]
        for label, (median, p99) in results.items():
            print(
                f"   {label:40} {median:6.3f} ms / {p99:6.3f} ms   ratio {median / baseline:4.2f}x"
            )
        print(f"2. throughput, {queries} queries, {concurrency} in flight:")
        rates = {label: await throughput(ask, queries, concurrency) for label, ask in cases.items()}
        base_rate = rates["the same name, asked of the upstream"]
        for label, rate in rates.items():
            print(f"   {label:40} {rate:8.0f} q/s   ratio {rate / base_rate:4.2f}x")
    finally:
        await agent.stop()
        await upstream.stop()


def main() -> None:
    from dockyard.common import logging as dlogging

    dlogging.configure("warning")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.queries, args.concurrency))


if __name__ == "__main__":
    main()
