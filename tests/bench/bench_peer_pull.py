"""Pulling an image's layers from another node's agent against pulling them from the registry.

    python tests/bench/bench_peer_pull.py [--layers 5] [--layer-size 20M] [--runs 3]

Starts a private docker-registry on loopback and pushes a LAYERS x LAYER-SIZE image of
random bytes to it. Then, into a fresh image store each time (the agent's ImageService):

  registry  pull from the registry (plain HTTP, as the registry serves here)
  peer      the same pull, every blob fetched from a node that holds the image, through
            the agent's Peer service (gRPC, plaintext: the same footing as the registry)
  peer+tls  the same, over mutual TLS with node certificates of a throwaway CA
  peer-miss the same, the peer holding none of it (the cost of asking first)

The manifest always comes from the registry. Ratios are against the registry pull of the
same run (median of RUNS). The registry's blob requests are counted from its access log,
to show that the peer pulls take no layer from it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchlib import Cleanup, free_port, ratio, start_registry

from dockyard.agent.containers.peer_servicer import PeerServicer
from dockyard.agent.images.blobs import BlobStore
from dockyard.agent.images.build import big_layers, build_image
from dockyard.agent.images.peer_fetch import PeerFetcher
from dockyard.agent.images.reference import parse_reference
from dockyard.agent.images.service import ImageService
from dockyard.common import pki
from dockyard.common.logging import configure
from dockyard.common.sizes import parse_size
from dockyard.v1 import peer_pb2_grpc


def blob_gets(log: Path) -> int:
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if '"GET /v2/' in line and "/blobs/sha256:" in line
    )


async def serve(
    blobs: BlobStore, credentials: grpc.ServerCredentials | None
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServicer_to_server(PeerServicer(blobs), server)
    address = f"127.0.0.1:{free_port()}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    await server.start()
    return server, address


ClientCredentials = Callable[[], grpc.ChannelCredentials]


def tls_pair() -> tuple[grpc.ServerCredentials, ClientCredentials]:
    """Server credentials for the holding node, client credentials for the pulling one."""
    ca = pki.CertificateAuthority.create("bench")
    server_cert, server_key = ca.issue_pair(pki.NODE, "holder", sans=["127.0.0.1", "localhost"])
    client_cert, client_key = ca.issue_pair(pki.NODE, "puller")
    server = grpc.ssl_server_credentials([(server_key, server_cert)], ca.cert_pem, True)
    return server, lambda: grpc.ssl_channel_credentials(ca.cert_pem, client_key, client_cert)


async def timed_pull(root: Path, ref: str, fetcher: PeerFetcher | None, peers: list[str]) -> float:
    store = root / f"store-{time.monotonic_ns()}"
    images = ImageService(store)
    images.peer_fetcher = fetcher
    started = time.perf_counter()
    await images.pull(ref, peers=peers)
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(shutil.rmtree, store)
    return elapsed


async def bench(args: argparse.Namespace, root: Path, cleanup: Cleanup) -> None:
    host = start_registry(root / "registry", cleanup, access_log=True)
    log = root / "registry" / "registry.log"
    ref = f"{host}/bench/peer:latest"
    holder = ImageService(root / "holder")
    size = parse_size(args.layer_size)
    print(f"building and pushing {args.layers} x {args.layer_size} random layers ...", flush=True)
    await build_image(
        holder.store, big_layers(args.layers, size), parse_reference(ref), compression="none"
    )
    await holder.push(ref)
    server_tls, client_tls = tls_pair()
    plain, plain_address = await serve(holder.store.blobs, None)
    secure, secure_address = await serve(holder.store.blobs, server_tls)
    empty, empty_address = await serve(BlobStore(root / "empty"), None)
    cases = {
        "registry": (None, []),
        "peer": (PeerFetcher(None), [plain_address]),
        "peer+tls": (PeerFetcher(client_tls), [secure_address]),
        "peer-miss": (PeerFetcher(None), [empty_address]),
    }
    results: dict[str, float] = {}
    try:
        for name, (fetcher, peers) in cases.items():
            before = blob_gets(log)
            times = [await timed_pull(root, ref, fetcher, peers) for _ in range(args.runs)]
            results[name] = statistics.median(times)
            gets = (blob_gets(log) - before) / args.runs
            print(
                f"  {name:10} {results[name] * 1000:8.0f} ms  "
                f"{ratio(results[name], results['registry']):>8} of the registry pull  "
                f"registry blob GETs per pull: {gets:.0f}",
                flush=True,
            )
    finally:
        for server in (plain, secure, empty):
            await server.stop(None)
    total = args.layers * size
    for name in ("registry", "peer", "peer+tls"):
        print(f"  {name:10} {total / results[name] / (1 << 20):8.0f} MiB/s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-size", default="20M")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    configure(level="warning")
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-peer-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    try:
        asyncio.run(bench(args, root, cleanup))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
