"""How `Store.commit_each` splits ops into transactions: at most the etcd's
--max-txn-ops ops each (the embedded etcd's higher limit when the store is told so),
and about MAX_TXN_BYTES of keys and values, under etcd's default --max-request-bytes."""

from __future__ import annotations

from dockyard.controller.records import Op
from dockyard.controller.store import EMBEDDED_MAX_TXN_OPS, MAX_TXN_BYTES, MAX_TXN_OPS, Store


def sizes(store: Store, ops: list[Op]) -> list[int]:
    batches = store._batches(ops)
    assert [i for batch in batches for i in batch] == list(range(len(ops)))  # all, in order
    return [len(batch) for batch in batches]


def test_small_ops_go_by_count_and_large_ones_by_bytes() -> None:
    small = [Op(f"/k/{i}", b"x" * 100) for i in range(3000)]
    assert sizes(Store(["127.0.0.1:1"]), small) == [128] * 23 + [56]
    embedded = Store(["127.0.0.1:1"], max_txn_ops=EMBEDDED_MAX_TXN_OPS)
    assert sizes(embedded, small) == [1024, 1024, 952]
    large = [Op(f"/k/{i}", b"x" * 100_000) for i in range(30)]
    per_batch = sizes(embedded, large)
    assert max(per_batch) * 100_000 <= MAX_TXN_BYTES and sum(per_batch) == 30
    assert sizes(embedded, [Op("/huge", b"x" * (2 * MAX_TXN_BYTES))]) == [1]  # alone
    assert MAX_TXN_OPS == 128
