"""Measure the bridge network on a real agent (root, runc, conmon, CNI plugins).

    /work/venv/bin/python tests/network/bench_network.py [--runs 20] [--seconds 3]

1. `dockyard -H AGENT run --rm --network bridge busybox true` against `--network none`,
   alternating, the median (and p90) of `--runs` each: the CLI's whole wall time.
2. HTTP requests/s to a busybox httpd through a published port (127.0.0.1:PORT, DNAT)
   and to the container's address on the bridge: one python client, a new connection per
   request (busybox httpd closes each), for `--seconds` each.

Everything it makes (agent, containers, namespaces, rules, bridge) is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.network.conftest import free_subnet, wait_http, web_command
from tests.ports import free_port
from tests.runtime.conftest import cleanup_everything, cleanup_network

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dy-bench-net-") as tmp:
        run(Path(tmp), args.runs, args.seconds)


def run(tmp: Path, runs: int, seconds: float) -> None:
    bridge, subnet = f"dyb{uuid.uuid4().hex[:8]}", free_subnet()
    cgroup = f"dockyard-bench-{uuid.uuid4().hex[:8]}"
    state, address = tmp / "agent", f"127.0.0.1:{free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
        "DOCKYARD_CONFIG": str(tmp / "cli"),
    }

    def cli(*words: str) -> str:
        done = subprocess.run(
            [str(BIN / "dockyard"), "-H", address, *words],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise SystemExit(f"dockyard {' '.join(words)}: {done.stderr}")
        return done.stdout

    subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard.agent.images.build",
            "busybox",
            "--tag",
            "bench/busybox:latest",
            "--output",
            str(tmp / "bb.tar"),
        ],
        check=True,
        capture_output=True,
    )
    log = (tmp / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            str(BIN / "dockyard-agent"),
            "run",
            "--insecure",
            "--runtime",
            "runc",
            "--controller",
            f"127.0.0.1:{free_port()}",
            "--listen",
            address,
            "--state-dir",
            str(state),
            "--cgroup-parent",
            cgroup,
            "--bridge",
            bridge,
            "--bridge-subnet",
            subnet,
            "--log-level",
            "warning",
            "--docker-api-socket",  # not the host's /run/dockyard/docker.sock
            "",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(BIN / "dockyard"), "-H", address, "images"],
            env=env,
            capture_output=True,
            check=False,
        ).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not answer")
            time.sleep(0.1)
        cli("image", "load", "-i", str(tmp / "bb.tar"))
        image = "bench/busybox:latest"
        cli("run", "--rm", "--network", "bridge", image, "true")  # warm up: makes the bridge
        cli("run", "--rm", image, "true")
        timings: dict[str, list[float]] = {"bridge": [], "none": []}
        for _ in range(runs):
            for mode in ("bridge", "none"):
                start = time.perf_counter()
                cli("run", "--rm", "--network", mode, image, "true")
                timings[mode].append(time.perf_counter() - start)
        print(f"dockyard run --rm busybox true, {runs} runs each (median / p90):")
        for mode, values in timings.items():
            values.sort()
            print(
                f"  --network {mode:<7} {statistics.median(values) * 1000:6.0f} ms  "
                f"{values[int(len(values) * 0.9) - 1] * 1000:6.0f} ms"
            )
        port = free_port()
        web = cli("run", "-d", "-p", f"127.0.0.1:{port}:80", image, *web_command("x")).strip()
        ip = cli("container", "inspect", web, "-o", "json").split('"ip_address": "')[1]
        ip = ip.split('"', 1)[0]
        wait_http(f"http://127.0.0.1:{port}/")
        print(f"HTTP GET, one client, a connection per request, {seconds:g} s each:")
        for label, host, target in (
            ("published port 127.0.0.1", "127.0.0.1", port),
            ("container address", ip, 80),
        ):
            rate = requests_per_second(host, target, seconds)
            print(f"  {label:<26} {host}:{target:<6} {rate:8.0f} requests/s")
        cli("container", "rm", "-f", web)
    finally:
        agent.kill()
        agent.wait(15)
        log.close()
        cleanup_everything(state / "runtime", cgroup)
        cleanup_network(state / "network", bridge, [subnet.rsplit(".", 1)[0] + "."])


def requests_per_second(host: str, port: int, seconds: float) -> float:
    count, end = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status != 200:
            raise SystemExit(f"GET http://{host}:{port}/: {response.status}")
        count += 1
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
