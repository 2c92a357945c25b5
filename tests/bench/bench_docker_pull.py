"""`docker pull` of a ~100 MiB image: the same docker CLI against a Dockyard agent and dockerd.

    python tests/bench/bench_docker_pull.py [--runs 3] [--layers 5] [--layer-size 20M]

Run as root. Starts a private docker-registry, builds an image of random
(incompressible) layers (5 x 20 MiB by default) and pushes it there; starts one runc
`dockyard-agent` serving the Docker API on a unix socket in a temp dir, and a private
dockerd (own data-root, exec-root, pidfile, containerd and socket, `--bridge=none
--iptables=false`, the registry as `--insecure-registry`; skipped with a message when
dockerd is missing). Then, N times per side, with the same client (/usr/bin/docker):
`docker pull IMAGE` into an empty store (the image is removed, and the store
garbage-collected, between runs), wall time of the CLI process. Prints the median per
side and the ratio ours / dockerd, measured in this run. Cleans up everything, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
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
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
        return done


def pull_once(client: Client, image: str) -> float:
    """One cold pull: the image is removed first (its layers go with it)."""
    client.run("rmi", "-f", image, check=False)
    client.run("image", "prune", "-f", check=False)
    start = time.perf_counter()
    output = client.run("pull", image).stdout
    elapsed = time.perf_counter() - start
    if "Already exists" in output or "Pull complete" not in output:
        raise RuntimeError(f"the pull was not cold:\n{output}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="pulls per side")
    parser.add_argument("--layers", type=int, default=5, help="layers of the image")
    parser.add_argument("--layer-size", default="20M", help="bytes per layer (K/M/G)")
    parser.add_argument("--timeout", type=float, default=900, help="global limit, seconds")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None or not Path(DOCKER_CLI).exists():
        print("bench_docker_pull needs root, runc, conmon and /usr/bin/docker", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-dockerpull-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    results: dict[str, object] = {
        "runs": args.runs,
        "layers": args.layers,
        "layer_size": args.layer_size,
    }
    try:
        registry = start_registry(root / "registry", cleanup)
        image = f"{registry}/bench/random:latest"
        build_and_push(
            "big",
            image,
            root / "build.log",
            "--layers",
            str(args.layers),
            "--layer-size",
            args.layer_size,
        )
        socket = root / "agent-docker.sock"
        start_agent(
            root / "agents",
            "bench-dockerpull",
            f"127.0.0.1:{free_port()}",
            registry,
            f"dockyard-bench-{secrets.token_hex(3)}",
            cleanup,
            extra=["--docker-api-socket", str(socket), "--no-peer-routes"],
        )
        ours = Client(f"unix://{socket}", root / "client-ours")
        wait_for(lambda: ours.run("version", check=False).returncode == 0, "the Docker API", 30)
        sides = [("dockyard", ours)]
        docker = Docker(root / "docker", registry, cleanup, private=True)
        if docker.start():
            sides.append(("dockerd", Client(docker.env["DOCKER_HOST"], root / "client-docker")))
        print(f"measuring: docker pull {image} ({args.layers} x {args.layer_size} random)")
        for name, client in sides:
            times = [pull_once(client, image) for _ in range(args.runs)]
            median = statistics.median(times)
            results[name] = {
                "median_s": round(median, 3),
                "runs_s": [round(t, 3) for t in times],
            }
            print(f"{name:9} median {median:7.2f} s   runs {', '.join(f'{t:.2f}' for t in times)}")
        if len(sides) == 2:
            ours_s = results["dockyard"]["median_s"]  # type: ignore[index]
            theirs_s = results["dockerd"]["median_s"]  # type: ignore[index]
            results["ratio_median"] = round(ours_s / theirs_s, 2)
            print(f"ratio median dockyard / dockerd: {ours_s / theirs_s:.2f}x")
        print("\n" + json.dumps(results, indent=2))
        return 0
    except (KeyboardInterrupt, BenchTimeout) as exc:
        print(f"aborted: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
