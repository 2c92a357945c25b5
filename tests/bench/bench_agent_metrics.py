"""The agent's `/metrics` at N running containers: scrape time and size.

    python tests/bench/bench_agent_metrics.py [--containers 100] [--scrapes 20] [--timeout 900]

Run as root. Starts a private docker-registry with busybox, one `dockyard-agent run
--runtime runc --metrics-listen`, N busybox `sleep` containers through its API (memory
limit 64 MiB each, network `none`), then scrapes `/metrics` repeatedly and prints the
median and worst scrape time, the body size, the number of series, and the agent's own
`dockyard_metrics_scrape_duration_seconds`. Cleans up every process, container, mount,
cgroup and the temp dir, also on Ctrl-C and when --timeout runs out.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BenchTimeout,
    Cleanup,
    build_and_push,
    free_port,
    install_limits,
    median,
    start_agent,
    start_registry,
)


def scrape(url: str) -> tuple[float, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    with opener.open(url, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - started, body


def start_containers(address: str, image: str, count: int) -> float:
    """N detached sleeps; returns the seconds it took."""
    import grpc

    from dockyard.v1 import containers_pb2 as cpb
    from dockyard.v1 import containers_pb2_grpc, images_pb2_grpc
    from dockyard.v1 import images_pb2 as ipb

    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        list(
            images_pb2_grpc.ImagesStub(channel).Pull(ipb.PullImageRequest(image=image), timeout=120)
        )
        stub = containers_pb2_grpc.ContainersStub(channel)
        for i in range(count):
            record = stub.Create(
                cpb.CreateContainerRequest(
                    image=image,
                    name=f"m{i:04d}",
                    command=["sleep", "3600"],
                    memory_bytes=64 * 2**20,
                ),
                timeout=60,
            )
            stub.Start(cpb.ContainerRef(container=record.id), timeout=60)
    return time.monotonic() - started


def measure(url: str, scrapes: int) -> dict[str, float | int]:
    from prometheus_client.parser import text_string_to_metric_families

    times, sizes = [], []
    body = b""
    for _ in range(scrapes):
        seconds, body = scrape(url)
        times.append(seconds)
        sizes.append(len(body))
    families = list(text_string_to_metric_families(body.decode()))
    series = sum(len(f.samples) for f in families)
    own = next(
        s.value
        for f in families
        for s in f.samples
        if s.name == "dockyard_metrics_scrape_duration_seconds"
    )
    running = sum(
        s.value for f in families for s in f.samples if s.name == "dockyard_container_running"
    )
    return {
        "scrape_median_ms": median(times) * 1000,
        "scrape_max_ms": max(times) * 1000,
        "agent_side_ms": own * 1000,
        "bytes": sizes[-1],
        "series": series,
        "families": len(families),
        "running": int(running),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900, help="global limit, seconds")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or shutil.which("conmon") is None:
        print("bench_agent_metrics needs root, runc and conmon", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-metrics-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    try:
        registry = start_registry(root / "registry", cleanup)
        image = f"{registry}/bench/busybox:latest"
        build_and_push("busybox", image, root / "build.log")
        port = free_port()
        address, _ = start_agent(
            root / "agents",
            "metrics",
            f"127.0.0.1:{free_port()}",
            registry,
            f"dockyard-bench-metrics-{secrets.token_hex(3)}",
            cleanup,
            extra=["--metrics-listen", f"127.0.0.1:{port}"],
        )
        url = f"http://127.0.0.1:{port}/metrics"
        results = {"idle": measure(url, args.scrapes)}
        took = start_containers(address, image, args.containers)
        print(f"started {args.containers} containers in {took:.1f} s")
        results[f"{args.containers}_containers"] = measure(url, args.scrapes)
        for name, numbers in results.items():
            print(
                f"{name:>16}: scrape median {numbers['scrape_median_ms']:7.1f} ms, "
                f"max {numbers['scrape_max_ms']:7.1f} ms, agent-side "
                f"{numbers['agent_side_ms']:7.1f} ms, {numbers['bytes']:>8} bytes, "
                f"{numbers['series']:>6} series, {numbers['running']} running"
            )
        print(
            json.dumps(
                {
                    k: {n: round(v, 2) if isinstance(v, float) else v for n, v in r.items()}
                    for k, r in results.items()
                }
            )
        )
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchTimeout, TimeoutError) as exc:
        print(f"\nbench_agent_metrics: {exc}; cleaning up", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    import signal as _signal

    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    sys.exit(main())
