"""`docker build` (the legacy builder) against a Dockyard agent and a private dockerd,
with the same client binary and the same context.

    python tests/bench/bench_docker_build.py [--runs 10] [--timeout 900]

Run as root. The same setup as bench_docker_api.py (a private registry with busybox, one
runc agent with the Docker API on a unix socket, a private dockerd with `--bridge=none
--iptables=false`, skipped with a message when missing). Then, alternating sides, N
times each, the wall time of `DOCKER_BUILDKIT=0 docker build -q --network none` of:

  cold   FROM busybox; COPY a 1 MiB file and a small tree; RUN a shell step that writes
         a file; ENV, LABEL, WORKDIR, CMD; with `--no-cache`
  cached the same build again, every step from the layer cache

Prints p50 per side and mode and the ratio ours / dockerd, measured in this run.
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

from bench_docker_api import Client, _agent_pull_and_tag, _pull_and_tag, percentile
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

DOCKERFILE = """\
FROM busybox
ENV APP=/srv/app
WORKDIR /srv/app
COPY big.bin tree/ ./
RUN echo built > /srv/app/stamp && ls /srv/app > /srv/app/listing
LABEL bench=yes
CMD ["cat", "/srv/app/stamp"]
"""


def make_context(path: Path) -> None:
    (path / "tree" / "sub").mkdir(parents=True)
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "big.bin").write_bytes(os.urandom(1 << 20))
    for i in range(50):
        (path / "tree" / "sub" / f"f{i}.txt").write_text(f"{i}\n")


def build_once(client: Client, context: Path, cached: bool) -> float:
    args = ["build", "-q", "--network", "none", "-t", "bench-build:latest"]
    if not cached:
        args.append("--no-cache")
    env = dict(client.env, DOCKER_BUILDKIT="0")
    start = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/docker", *args, str(context)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"docker build: {done.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="builds per side and mode")
    parser.add_argument("--timeout", type=float, default=900, help="global limit, seconds")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("runc") is None:
        print("bench_docker_build needs root, runc, conmon and /usr/bin/docker", file=sys.stderr)
        return 2
    install_limits(args.timeout)
    root = Path(tempfile.mkdtemp(prefix="dockyard-bench-build-"))
    cleanup = Cleanup()
    cleanup.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    results: dict[str, object] = {"runs": args.runs}
    try:
        registry = start_registry(root / "registry", cleanup)
        busybox = f"{registry}/library/busybox:latest"
        build_and_push("busybox", busybox, root / "build.log")
        socket = root / "agent-docker.sock"
        address, _ = start_agent(
            root / "agents",
            "bench-build",
            f"127.0.0.1:{free_port()}",
            registry,
            f"dockyard-bench-{secrets.token_hex(3)}",
            cleanup,
            extra=["--docker-api-socket", str(socket), "--no-peer-routes"],
        )
        ours = Client(f"unix://{socket}", root / "client-ours")
        wait_for(lambda: ours.run("version", check=False).returncode == 0, "the Docker API", 30)
        _agent_pull_and_tag(address, busybox)
        sides = [("dockyard", ours)]
        docker = Docker(root / "docker", registry, cleanup, private=True)
        if docker.start():
            theirs = Client(docker.env["DOCKER_HOST"], root / "client-docker")
            _pull_and_tag(theirs, busybox)
            sides.append(("dockerd", theirs))
        context = root / "context"
        make_context(context)
        for mode, cached in (("cold", False), ("cached", True)):
            times: dict[str, list[float]] = {name: [] for name, _ in sides}
            for _name, client in sides:
                build_once(client, context, cached)  # warm (and fills the cache)
            for _ in range(args.runs):  # alternate the sides: the machine is shared
                for name, client in sides:
                    times[name].append(build_once(client, context, cached))
            for name, values in times.items():
                p50 = percentile(values, 0.5)
                results[f"{name}_{mode}_p50_ms"] = round(p50 * 1000, 1)
                print(f"{mode:6} {name:9} p50 {p50 * 1000:8.1f} ms")
            if len(sides) == 2:
                ratio = percentile(times["dockyard"], 0.5) / percentile(times["dockerd"], 0.5)
                results[f"ratio_{mode}_p50"] = round(ratio, 2)
                print(f"{mode:6} ratio p50 dockyard / dockerd: {ratio:.2f}x")
        print("\n" + json.dumps(results, indent=2))
        return 0
    except (KeyboardInterrupt, BenchTimeout) as exc:
        print(f"aborted: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
