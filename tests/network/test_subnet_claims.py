"""Host-wide claims on user-defined networks' subnets (agent/network/subnet_claims.py):
two agents on one host never hold the same block, whatever the timing; a purged agent's
claims are stale and given up."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from dockyard.agent.network.subnet_claims import SubnetClaims


def agents(tmp_path: Path, count: int) -> list[SubnetClaims]:
    owners = []
    for n in range(count):
        records = tmp_path / f"agent-{n}" / "networks.json"
        records.parent.mkdir()
        records.write_text("{}")
        owners.append(SubnetClaims(records, root=tmp_path / "claims"))
    return owners


def test_a_block_claimed_by_one_agent_is_refused_to_another(tmp_path: Path) -> None:
    a, b = agents(tmp_path, 2)
    assert a.claim("10.77.0.0/24", "red")
    assert not b.claim("10.77.0.0/24", "blue")
    assert b.others() == [("10.77.0.0/24", "network red of another agent")]
    assert a.others() == []  # its own claims are not in its way
    assert a.claim("10.77.0.0/24", "red")  # claiming again what it holds is fine
    b.release("10.77.0.0/24")  # not b's: nothing happens
    assert not b.claim("10.77.0.0/24", "blue")
    a.release("10.77.0.0/24")
    assert b.claim("10.77.0.0/24", "blue")


def test_a_purged_agents_claims_are_stale(tmp_path: Path) -> None:
    a, b = agents(tmp_path, 2)
    assert a.claim("10.77.1.0/24", "red")
    a.owner.unlink()  # `local-cluster down --purge`: its records are gone
    assert b.others() == []
    assert not list((tmp_path / "claims").glob("*.json"))  # removed on the way
    a.owner.write_text("{}")  # a new agent in the same place
    assert a.claim("10.77.2.0/24", "green")
    a.owner.unlink()
    assert b.claim("10.77.2.0/24", "blue")


def test_a_half_written_claim_does_not_block(tmp_path: Path) -> None:
    (a,) = agents(tmp_path, 1)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "10.77.3.0_24.json").write_text('{"subnet": "10.77')
    assert a.others() == []
    assert a.claim("10.77.3.0/24", "red")


def race(claims: list[SubnetClaims], subnet: str) -> list[int]:
    """Every agent claims `subnet` at once; the agents that won."""
    won: list[int] = []
    barrier = threading.Barrier(len(claims))

    async def choose_and_claim(n: int) -> None:
        async with claims[n].held():
            if subnet not in {s for s, _ in claims[n].others()}:
                assert claims[n].claim(subnet, f"net{n}")
                won.append(n)

    def claim(n: int) -> None:
        barrier.wait()
        asyncio.run(choose_and_claim(n))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(claims))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_racing_agents_one_winner(tmp_path: Path) -> None:
    claims = agents(tmp_path, 8)
    for round_ in range(20):
        subnet = f"10.77.{10 + round_}.0/24"
        won = race(claims, subnet)
        assert len(won) == 1, (subnet, won)
