"""Benchmark: a ``true`` container through RuncRuntime vs raw ``runc run``; conmon memory.

Run as root: ``python tests/runtime/bench_runtime.py [N]``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dockyard.agent.runtime.base import ContainerSpec
from dockyard.agent.runtime.runc.runtime import RuncRuntime
from tests.runtime.conftest import cleanup_everything, make_busybox_rootfs


def _smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    cgroup_parent = f"dockyard-bench-{uuid.uuid4().hex[:6]}"
    state = tmp / "state"
    layer = make_busybox_rootfs(tmp / "layer")
    runtime = RuncRuntime(state, cgroup_parent=cgroup_parent)
    await runtime.recover()

    def config(*cmd: str) -> ContainerSpec:
        cid = f"b{uuid.uuid4().hex[:12]}"
        return ContainerSpec(
            id=cid, name=cid, image="busybox", lower_dirs=[layer], command=list(cmd)
        )

    try:
        ours = []
        for _ in range(n):
            t0 = time.perf_counter()
            info = await runtime.create(config("true"))
            await runtime.start(info.id)
            exit_info = await runtime.wait(info.id)
            await runtime.remove(info.id)
            ours.append(time.perf_counter() - t0)
            assert exit_info.exit_code == 0

        # Raw runc on the same kind of bundle (our config.json, our mounted rootfs).
        info = await runtime.create(config("true"))
        bundle = state / "containers" / info.id / "bundle"
        raw_root = tmp / "raw-runc"
        raw = []
        for _ in range(n):
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "runc",
                "--root",
                str(raw_root),
                "run",
                "-b",
                str(bundle),
                f"raw{uuid.uuid4().hex[:8]}",
                stdin=subprocess.DEVNULL,
            )
            assert await proc.wait() == 0
            raw.append(time.perf_counter() - t0)
        await runtime.remove(info.id)

        # conmon memory with one running container
        info = await runtime.create(config("sleep", "30"))
        await runtime.start(info.id)
        conmon_pid = int((state / "containers" / info.id / "conmon.pid").read_text())
        mem = _smaps_rollup(conmon_pid)
        await runtime.remove(info.id, force=True)

        m_ours, m_raw = statistics.median(ours), statistics.median(raw)
        print(f"runs: {n}")
        print(f"RuncRuntime create+start+wait+remove (true): median {m_ours * 1000:.1f} ms")
        print(f"raw runc run (true):                        median {m_raw * 1000:.1f} ms")
        print(f"ratio: {m_ours / m_raw:.2f}x")
        print(f"conmon per container: PSS {mem['Pss']} KiB, RSS {mem['Rss']} KiB")
    finally:
        await runtime.close()
        cleanup_everything(state, cgroup_parent)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
