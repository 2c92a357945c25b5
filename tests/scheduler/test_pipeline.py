"""The pipeline counts the first filter that refused each node and words the counts."""

from __future__ import annotations

from dockyard.controller.scheduler import Pipeline
from dockyard.controller.scheduler.pipeline import NO_NODES

from .helpers import GIB, make_info, make_task


def test_explains_the_filters_that_removed_nodes_most_first() -> None:
    pipeline = Pipeline()
    pipeline.set_task(make_task("t", memory=2 * GIB, constraints=["node.labels.zone==eu"]))
    infos = [
        make_info("n1", memory=GIB, labels={"zone": "eu"}),
        make_info("n2", memory=GIB, labels={"zone": "eu"}),
        make_info("n3", memory=8 * GIB, labels={"zone": "us"}),
    ]
    assert pipeline.passing(infos) == []
    assert pipeline.explain() == (
        "no suitable node: insufficient memory (needs 2.0 GiB) on 2 nodes; "
        "1 node fails node.labels.zone==eu"
    )
    assert pipeline.failures() == {"ResourceFilter": 2, "ConstraintFilter": 1}


def test_only_filters_that_removed_nodes_are_named() -> None:
    pipeline = Pipeline()
    pipeline.set_task(make_task("t", memory=GIB, ports=[80]))
    infos = [make_info("n1", ready=False), make_info("n2")]
    assert [i.id for i in pipeline.passing(infos)] == ["n2"]
    pipeline.reset_counts()
    pipeline.passing(infos[:1])
    assert pipeline.explain() == "no suitable node: 1 node is not ready"


def test_no_nodes_at_all() -> None:
    pipeline = Pipeline()
    pipeline.set_task(make_task("t"))
    assert pipeline.passing([]) == []
    assert pipeline.explain() == NO_NODES == "no suitable node: the cluster has no nodes"
