"""What encryption at rest costs: secret writes and reads on a real etcd, plaintext
(no key file, as main) against sealed, the two alternating round by round; and the
leader's re-encryption pass.

    python tests/bench/bench_secrets_at_rest.py [--rounds 5] [--ops 40] [--secrets 200]

Each round: `--ops` creates, then as many reads (get + open, what the assigner does the
first time a node needs a secret) of 1 KiB and of 500 KiB secrets, with and without a
key file, the order swapped every round. Prints per-round medians, the medians of the
rounds and their ratios (sealed / plaintext), then the rewrap pass over `--secrets`
plaintext 1 KiB secrets and the pass when every secret is current (a term's start);
`uptime` before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import timeit
from pathlib import Path

from dockyard.common import logging as dlogging
from dockyard.common.etcd_server import EtcdServer
from dockyard.controller.at_rest import SecretCipher
from dockyard.controller.encryption_keys import create_key_file
from dockyard.controller.secret_rewrap import rewrap_all
from dockyard.controller.secrets import SecretRegistry
from dockyard.controller.store import Store
from dockyard.v1.workloads_pb2 import SecretSpec

SIZES = {"1KiB": 1024, "500KiB": 500 * 1024}


async def one_round(
    store: Store, cipher: SecretCipher, ops: int, tag: str
) -> dict[str, tuple[float, float]]:
    """Per size: median seconds of a create and of a read+open."""
    registry = SecretRegistry(store, cipher=cipher)
    found: dict[str, tuple[float, float]] = {}
    for size_name, size in SIZES.items():
        created: list[str] = []
        writes: list[float] = []
        for index in range(ops):
            spec = SecretSpec(name=f"{tag}-{size_name}-{index}", data=b"s" * size)
            started = time.perf_counter()
            record = await registry.create(spec)
            writes.append(time.perf_counter() - started)
            created.append(record.id)
        reads: list[float] = []
        for record_id in created:
            started = time.perf_counter()
            data = await registry.data(record_id)
            reads.append(time.perf_counter() - started)
            assert len(data) == size
        for record_id in created:
            await registry.remove(record_id)
        found[size_name] = (statistics.median(writes), statistics.median(reads))
    return found


def time_alone(cipher: SecretCipher, length: int) -> tuple[float, float]:
    """Seconds of one seal and one open of `length` bytes, without etcd."""
    data = b"c" * length
    sealed = cipher.seal("secretdata/x", data)

    def seal() -> None:
        cipher.seal("secretdata/x", data)

    def unseal() -> None:
        cipher.open("secretdata/x", sealed)

    return (
        min(timeit.repeat(seal, number=50)) / 50,
        min(timeit.repeat(unseal, number=50)) / 50,
    )


async def rewrap_pass(store: Store, cipher: SecretCipher, count: int) -> tuple[float, float]:
    """Seconds of the pass over `count` plaintext secrets, then of the pass with none to do."""
    plain = SecretRegistry(store)
    for index in range(count):
        await plain.create(SecretSpec(name=f"rewrap-{index}", data=b"r" * 1024))
    started = time.perf_counter()
    first = await rewrap_all(store, cipher)
    sealing = time.perf_counter() - started
    assert first.rewrapped == count, first
    started = time.perf_counter()
    second = await rewrap_all(store, cipher)
    idle = time.perf_counter() - started
    assert second.current == count and second.rewrapped == 0, second
    return sealing, idle


async def main(rounds: int, ops: int, secrets: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-atrest-") as temporary:
        root = Path(temporary)
        cipher = SecretCipher(create_key_file(root / "keys"))
        etcd = EtcdServer(root / "etcd", log_path=root / "etcd.log")
        await etcd.start()
        store = Store([etcd.endpoint], "/bench")
        try:
            await store.connect(10)
            results: dict[str, list[dict[str, tuple[float, float]]]] = {"plain": [], "sealed": []}
            for number in range(rounds):
                order = ["plain", "sealed"] if number % 2 == 0 else ["sealed", "plain"]
                for mode in order:
                    used = cipher if mode == "sealed" else SecretCipher()
                    found = await one_round(store, used, ops, f"r{number}{mode}")
                    results[mode].append(found)
                    shown = ", ".join(
                        f"{size} create {w * 1e3:.2f} ms read {r * 1e3:.2f} ms"
                        for size, (w, r) in found.items()
                    )
                    print(f"round {number + 1} {mode:6}: {shown}", flush=True)
            for size in SIZES:
                line = []
                for index, what in enumerate(("create", "read")):
                    plain = statistics.median(r[size][index] for r in results["plain"])
                    sealed = statistics.median(r[size][index] for r in results["sealed"])
                    line.append(
                        f"{what} {plain * 1e3:.2f} -> {sealed * 1e3:.2f} ms (x{sealed / plain:.2f})"
                    )
                print(f"median of rounds, {size}: " + "; ".join(line))
            for size_name, length in SIZES.items():
                seal, opened = time_alone(cipher, length)
                print(
                    f"alone, {size_name}: seal {seal * 1e6:.1f} us, "
                    f"open {opened * 1e6:.1f} us (best of 5 x 50)"
                )
            sealing, idle = await rewrap_pass(store, cipher, secrets)
            print(
                f"rewrap: {secrets} plaintext 1 KiB secrets re-encrypted in {sealing:.2f} s "
                f"({sealing / secrets * 1e3:.2f} ms each); the pass with none to do "
                f"{idle:.2f} s"
            )
        finally:
            await store.close()
            await etcd.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--secrets", type=int, default=200)
    args = parser.parse_args()
    dlogging.configure("warning")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    asyncio.run(main(args.rounds, args.ops, args.secrets))
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
