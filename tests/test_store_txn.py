"""The transaction `Store.commit` sends, built in place (`_txn_request`), is exactly the
one etcd3aio's builders make: every op's compare (absent, at a revision, a kind
unchanged since a revision), the fence's compare and its failure read, and every put
(with its lease) and delete, in order. The behaviour against a real etcd (conflicts,
fences, leases) is in test_store.py and test_leadership_fencing.py."""

from __future__ import annotations

from etcd3aio._protobuf import TxnRequest
from etcd3aio.kv import KVService

from dockyard.controller.records import Fence, Op
from dockyard.controller.store import TASKS, Store, _txn_request
from dockyard.v1.workloads_pb2 import Task


def built_by_etcd3aio(ops: list[Op], fence: Fence | None) -> TxnRequest:
    """What main's `commit` sent: etcd3aio's builders, one message at a time."""
    compares = []
    for op in ops:
        if op.expect is None:
            continue
        if op.range_end is not None:
            compare = KVService.txn_compare_create_revision(op.key, 0, range_end=op.range_end)
            compare.target = compare.MOD
            compare.result = compare.LESS
            compare.mod_revision = op.expect + 1
        else:
            compare = KVService.txn_compare_create_revision(op.key, 0)
            if op.expect != 0:
                compare.target = compare.MOD
                compare.mod_revision = op.expect
        compares.append(compare)
    requests = [
        KVService.txn_op_delete(op.key)
        if op.value is None
        else KVService.txn_op_put(op.key, op.value, lease=op.lease)
        for op in ops
        if not op.check_only
    ]
    failure = []
    if fence is not None:
        compares.append(KVService.txn_compare_create_revision(fence.key, fence.create_revision))
        failure.append(KVService.txn_op_get(fence.key))
    return TxnRequest(compare=compares, success=requests, failure=failure)


def every_kind_of_op() -> list[Op]:
    store = Store(["127.0.0.1:1"])
    task = Task(id="t1", service_id="s1")
    return [
        store.put_op(TASKS, "t1", task, expect=0),  # create: must be absent
        store.put_op(TASKS, "t2", task, expect=41),  # update: still at revision 41
        store.put_op(TASKS, "t3", task, expect=None),  # no compare
        store.raw_op(TASKS, "t4", None, expect=7),  # delete at a revision
        store.raw_op(TASKS, "t5", None, expect=None),  # delete, no compare
        store.check_op(TASKS, "t6", 12),  # compare only
        store.check_op(TASKS, "t7", 0),  # compare only: still absent
        store.unchanged_op(TASKS, 99),  # nothing of the kind modified after 99
        store.leased_op(TASKS, "t8", task, lease=0x1234),  # created on a lease
        Op("/dockyard/controllers/c1", b"me", None, lease=77),  # leased, no compare
    ]


def test_the_transaction_is_the_one_etcd3aios_builders_make() -> None:
    ops = every_kind_of_op()
    for fence in (None, Fence("/dockyard/leader/leader", 5)):
        built = _txn_request(ops, fence)
        expected = built_by_etcd3aio(ops, fence)
        assert built == expected
        assert built.SerializeToString() == expected.SerializeToString()


def test_the_fence_is_compared_last_and_read_when_it_fails() -> None:
    fence = Fence("/dockyard/leader/leader", 5)
    built = _txn_request(every_kind_of_op(), fence)
    assert built.compare[-1].key == b"/dockyard/leader/leader"
    assert built.compare[-1].target == built.compare[-1].CREATE
    assert built.compare[-1].create_revision == 5
    assert [op.request_range.key for op in built.failure] == [b"/dockyard/leader/leader"]
    assert len(built.compare) == 8  # 7 compared ops and the fence
    assert len(built.success) == 7  # every op but the three compare-only ones
