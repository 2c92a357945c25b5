"""The overlay networks' subnet and VNI allocator (controller/network_pool.py): pure."""

from __future__ import annotations

import ipaddress
import re

import pytest

from dockyard.common.validation import ValidationError
from dockyard.controller.network_pool import (
    FIRST_VNI,
    NetworkPool,
    PoolExhausted,
    check_requested,
    next_vni,
)

Net = ipaddress.IPv4Network
IP = ipaddress.IPv4Address


def test_blocks_skip_every_taken_range_and_never_overlap() -> None:
    pool = NetworkPool("10.112.0.0/22", 24)
    taken = [("network a", Net("10.112.0.0/24")), ("node n1's bridge subnet", Net("10.112.2.0/25"))]
    chosen = []
    for index in range(2):
        block = pool.allocate(taken)
        assert not any(block.overlaps(held) for _, held in taken)
        chosen.append(block)
        taken.append((f"network {index}", block))
    assert chosen == [Net("10.112.1.0/24"), Net("10.112.3.0/24")]


def test_a_block_covering_a_host_address_is_skipped() -> None:
    pool = NetworkPool("10.112.0.0/23", 24)
    assert pool.allocate([], [("node abc", IP("10.112.0.7"))]) == Net("10.112.1.0/24")


def test_exhaustion_names_the_pool() -> None:
    pool = NetworkPool("10.112.0.0/23", 24)
    taken = [("network a", Net("10.112.0.0/24")), ("the node subnet pool", Net("10.112.1.0/24"))]
    with pytest.raises(
        PoolExhausted, match=r"no free /24 left in the network pool 10\.112\.0\.0/23"
    ):
        pool.allocate(taken)


def test_a_pool_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("--network-pool '10.112.0.1/12'")):
        NetworkPool("10.112.0.1/12")
    with pytest.raises(ValueError, match="--network-size 8"):
        NetworkPool("10.112.0.0/12", 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.87.5.0/24", "overlaps the node subnet pool (10.87.0.0/16)"),
        ("10.120.0.0/16", "overlaps network web (10.120.3.0/24)"),
        ("10.130.0.0/30", "between /8 and /29"),
        ("10.130.0.1/24", "host bits set"),
        ("192.168.0.0/16", "covers the address 192.168.1.10 of controller"),
    ],
)
def test_a_requested_subnet_is_checked(text: str, message: str) -> None:
    taken = [("the node subnet pool", Net("10.87.0.0/16")), ("network web", Net("10.120.3.0/24"))]
    with pytest.raises(ValidationError, match=re.escape(message)) as raised:
        check_requested("spec.subnet", text, taken, [("controller", IP("192.168.1.10"))])
    assert raised.value.field == "spec.subnet"


def test_a_free_requested_subnet_is_taken_as_given() -> None:
    assert check_requested("spec.subnet", "10.130.0.0/24", []) == Net("10.130.0.0/24")


def test_vnis_count_up_from_4096_and_fill_gaps() -> None:
    assert next_vni([]) == FIRST_VNI
    assert next_vni([FIRST_VNI, FIRST_VNI + 2]) == FIRST_VNI + 1
