"""Once started, the controller and the agent move what start-up made to the GC's
permanent generation and collect young objects less often (common/gc_settle.py): the
measurement is in docs/performance.md ("Placement, fifth pass (txn)")."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dockyard.common.gc_settle import GC_YOUNG_THRESHOLD, settle_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_come_less_often() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    settle_gc()
    assert gc.get_freeze_count() > 1000  # at least this test's imports
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    assert GC_YOUNG_THRESHOLD > 700  # Python's default
