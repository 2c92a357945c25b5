"""The Docker API benchmark: the same docker CLI against a Dockyard agent and dockerd.

    python tests/bench/bench_docker_api.py [--runs 20] [--timeout 600] [--network none]

Run as root. Starts a private docker-registry with busybox, one runc `dockyard-agent`
serving the Docker API on a unix socket in a temp dir, and a private dockerd (own
data-root, exec-root, pidfile, containerd and socket; `--bridge=none
--iptables=false`: it never touches the host's network; skipped with a message when
dockerd is missing). Both get busybox from the registry, tagged `busybox:latest`.
Then, N times each, with the same client binary (/usr/bin/docker):

  run      `docker run --rm --network none busybox true` (create, attach, wait, start,
           the removal), wall time of the CLI process

When the agent does not serve attach yet (501), `run` measures the same container
without the CLI attaching: `docker run -d` + `docker wait` + `docker rm`, both sides.
Prints p50 and p99 per side and the ratio ours / dockerd, measured in this run.
Cleans up every process, container, mount, cgroup and the temp dir, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    BenchTimeout,
    Cleanup,
    Docker,
    build_and_push,
    free_port,
    install_limits,
    start_agent,
    start_registry,
    wait_for,
)

DOCKER_CLI = "/usr/bin/docker"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Client:
    """The docker CLI at one endpoint, with its own empty DOCKER_CONFIG."""

    def __init__(self, host: str, config: Path) -> None:
        config.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env.update(DOCKER_HOST=host, DOCKER_CONFIG=str(config))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [DOCKER_CLI, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done

    def timed(self, *args: str) -> float:
        start = time.perf_counter()
        self.run(*args)
        return time.perf_counter() - start


def run_once(client: Client, attached: bool, network: str) -> float:
    if attached:
        return client.timed("run", "--rm", "--network", network, "busybox", "true")
    start = time.perf_counter()
    cid = client.run("run", "-d", "--network", network, "busybox", "true").stdout.strip()
    client.run("wait", cid)
    client.run("rm", cid)
    return time.perf_counter() - start


def attach_served(client: Client, network: str) -> bool:
    done = client.run("run", "--rm", "--network", network, "busybox", "true", check=False)
    if done.returncode == 0:
        return True
    if "not supported by dockyard" in done.stderr or "received 501" in done.stderr:
        return False
    raise RuntimeError(f"docker run against the agent failed: {done.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs per side")
    parser.add_argument("--timeout", type=float, default=600, help="global limit, seconds")
    parser.add_argument("--network", default="none", help="--network of the runs (none, host)")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or not Path(DOCKER_CLI).exists():
        print("bench_docker_api needs root, runc, conmon and /usr/bin/docker", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-dockerapi-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    results: dict[str, object] = {"runs": args.runs, "network": args.network}
    try:
        registry = start_registry(root / "registry", cleanup)
        busybox = f"{registry}/library/busybox:latest"
        build_and_push("busybox", busybox, root / "build.log")
        socket = root / "agent-docker.sock"
        address, _ = start_agent(
            root / "agents",
            "bench-dockerapi",
            f"127.0.0.1:{free_port()}",
            registry,
            f"dockyard-bench-{secrets.token_hex(3)}",
            cleanup,
            extra=["--docker-api-socket", str(socket), "--no-peer-routes"],
        )
        ours = Client(f"unix://{socket}", root / "client-ours")
        wait_for(lambda: ours.run("version", check=False).returncode == 0, "the Docker API", 30)
        _agent_pull_and_tag(address, busybox)
        docker = Docker(root / "docker", registry, cleanup, private=True)
        theirs = None
        if docker.start():
            theirs = Client(docker.env["DOCKER_HOST"], root / "client-docker")
            _pull_and_tag(theirs, busybox)
        attached = attach_served(ours, args.network)
        results["mode"] = "docker run --rm" if attached else "docker run -d + wait + rm"
        print(f"measuring: {results['mode']} --network {args.network} busybox true")
        sides = [("dockyard", ours)] + ([("dockerd", theirs)] if theirs else [])
        for name, client in sides:
            run_once(client, attached, args.network)  # warm: page cache, first-run paths
            times = [run_once(client, attached, args.network) for _ in range(args.runs)]
            p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
            results[name] = {"p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1)}
            print(f"{name:9} p50 {p50 * 1000:8.1f} ms   p99 {p99 * 1000:8.1f} ms")
        if theirs is not None:
            ratio = results["dockyard"]["p50_ms"] / results["dockerd"]["p50_ms"]  # type: ignore[index]
            results["ratio_p50"] = round(ratio, 2)
            print(f"ratio p50 dockyard / dockerd: {ratio:.2f}x")
        print("\n" + json.dumps(results, indent=2))
        return 0
    except (KeyboardInterrupt, BenchTimeout) as exc:
        print(f"aborted: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


def _pull_and_tag(client: Client, image: str) -> None:
    client.run("pull", "-q", image)
    client.run("tag", image, "busybox:latest")


def _agent_pull_and_tag(address: str, image: str) -> None:
    """Through the agent's own API (the same store the Docker API's `pull` fills)."""
    import grpc

    from dockyard.v1 import images_pb2_grpc
    from dockyard.v1.images_pb2 import PullImageRequest, TagImageRequest

    with grpc.insecure_channel(address) as channel:
        images = images_pb2_grpc.ImagesStub(channel)
        for _ in images.Pull(PullImageRequest(image=image), timeout=300):
            pass
        images.Tag(TagImageRequest(source=image, target="busybox:latest"), timeout=60)


if __name__ == "__main__":
    sys.exit(main())
