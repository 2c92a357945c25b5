"""Children started while gRPC is busy must not run gRPC's fork handlers.

The embedded etcd is started with a ``preexec_fn`` (so ``fork()``, not ``vfork()``);
with gRPC's fork handlers on, the child restarted gRPC's poller, closed its descriptors
before ``exec`` and was aborted by that poller about once in 200 starts (an etcd that
"exited with code -6"). Importing Dockyard turns the handlers off (common/__init__.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import asyncio
import dockyard.common  # first, as every entry point does
import grpc

def nothing() -> None:
    pass

async def main() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # a blocking channel's threads too
    grpc.channel_ready_future(channel).result(timeout=10)
    failed = 0
    for _ in range(100):
        child = await asyncio.create_subprocess_exec("/bin/true", preexec_fn=nothing)
        failed += await child.wait() != 0
    print(failed)
    channel.close()
    await server.stop(None)

asyncio.run(main())
"""


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )


def test_children_of_a_busy_grpc_process_skip_grpcs_fork_handlers() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    result = run_script(env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0"
    assert "fork_posix" not in result.stderr, result.stderr[-2000:]
    assert "Bad file descriptor" not in result.stderr
