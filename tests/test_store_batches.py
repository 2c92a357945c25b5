"""How `Store.commit_each` splits ops into transactions: at most etcd's --max-txn-ops
ops each, and about MAX_TXN_BYTES of keys and values, under etcd's default
--max-request-bytes (1.5 MiB), so that large records never make a refused request."""

from __future__ import annotations

from dockyard.controller.records import Op
from dockyard.controller.store import MAX_TXN_BYTES, MAX_TXN_OPS, Store


def sizes(store: Store, ops: list[Op]) -> list[int]:
    batches = store._batches(ops)
    assert [i for batch in batches for i in batch] == list(range(len(ops)))  # all, in order
    return [len(batch) for batch in batches]


def test_small_ops_go_by_count_and_large_ones_by_bytes() -> None:
    store = Store(["127.0.0.1:1"])
    small = [Op(f"/k/{i}", b"x" * 100) for i in range(3000)]
    assert sizes(store, small) == [MAX_TXN_OPS] * 23 + [3000 - 23 * MAX_TXN_OPS]
    large = [Op(f"/k/{i}", b"x" * 100_000) for i in range(30)]
    per_batch = sizes(store, large)
    assert max(per_batch) * 100_000 <= MAX_TXN_BYTES and sum(per_batch) == 30
    assert sizes(store, [Op("/huge", b"x" * (2 * MAX_TXN_BYTES))]) == [1]  # alone
