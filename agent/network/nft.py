"""``nft -j -f -``: one JSON ruleset applied as one transaction, in this network
namespace or in a named one (the VIPs inside a container's, a node's in tests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dockyard.agent.network.netns import netns_path

__all__ = ["NFT_TIMEOUT", "run_nft"]

NFT_TIMEOUT = 10.0


async def run_nft(
    ruleset: dict[str, Any], netns: str | None = None, timeout: float = NFT_TIMEOUT
) -> tuple[int, str]:
    """Apply ``ruleset``; nft's exit code and its message (at most 500 characters).

    Raises:
        RuntimeError: nft did not answer within ``timeout`` (it is killed).
    """
    enter = ["nsenter", f"--net={netns_path(netns)}"] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *enter,
        "nft",
        "-j",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(json.dumps(ruleset).encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        where = f" in {netns}" if netns else ""
        raise RuntimeError(f"nft{where} did not answer in {timeout:g} s") from None
    return proc.returncode or 0, stderr.decode(errors="replace").strip()[:500]
