"""Scorers rank the nodes that passed the filters (OpenStack Nova's weighers).

A scorer returns a raw number per node; a `ScoreBoard` scales each scorer's
numbers to 0..1 over the candidate nodes and multiplies them by a weight, and the
weighted sum is the node's score (higher wins). Spread and bin-pack use the same
scorers one sign apart: spread prefers the emptiest node, bin-pack the fullest.

The scale is fixed when a task group starts, so a node's score changes only when
it receives a task: the scheduler can keep the candidates in a heap and place each
task in O(log nodes) instead of re-scoring the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from dockyard.v1.workloads_pb2 import Task

from .nodeinfo import NodeInfo

__all__ = [
    "ImageScorer",
    "ReservedScorer",
    "ScoreBoard",
    "Scorer",
    "Strategy",
    "TaskCountScorer",
    "Weighted",
    "strategy_scorers",
]

Strategy = Literal["spread", "binpack"]


class Scorer(Protocol):
    """A raw measure of a node; `unit` is the smallest difference worth a full point."""

    name: str
    unit: float

    def set_task(self, task: Task) -> bool:
        """Prepare for `task`; False when this scorer says nothing about it."""
        ...

    def raw(self, info: NodeInfo) -> float:
        """The node's raw number (bigger means fuller or more suitable, per scorer)."""
        ...


class TaskCountScorer:
    """How many tasks the node runs, of any service."""

    name = "task_count"
    unit = 1.0

    def set_task(self, task: Task) -> bool:
        return True

    def raw(self, info: NodeInfo) -> float:
        return float(len(info.tasks))


class ReservedScorer:
    """The share of the node's CPU and memory already reserved (0..1, the mean of both)."""

    name = "reserved"
    unit = 1.0

    def set_task(self, task: Task) -> bool:
        return True

    def raw(self, info: NodeInfo) -> float:
        total, reserved = info.total, info.reserved
        shares = []
        if total.nano_cpus > 0:
            shares.append(reserved.nano_cpus / total.nano_cpus)
        if total.memory_bytes > 0:
            shares.append(reserved.memory_bytes / total.memory_bytes)
        return sum(shares) / len(shares) if shares else 0.0


class ImageScorer:
    """1 when the node already has the task's image (no pull needed), else 0."""

    name = "image"
    unit = 1.0

    def __init__(self) -> None:
        self._image = ""

    def set_task(self, task: Task) -> bool:
        self._image = task.spec.container.image
        return bool(self._image)

    def raw(self, info: NodeInfo) -> float:
        return 1.0 if self._image in info.images else 0.0


@dataclass(frozen=True, slots=True)
class Weighted:
    """A scorer and its weight: positive prefers big raw numbers, negative small ones."""

    scorer: Scorer
    weight: float


# Magnitudes of the default weights; the strategy sets the sign of the first two.
DEFAULT_WEIGHTS: Mapping[str, float] = {"reserved": 1.0, "task_count": 1.0, "image": 0.1}


def strategy_scorers(
    strategy: Strategy, weights: Mapping[str, float] | None = None
) -> list[Weighted]:
    """The weighted scorers of a strategy.

    spread: fewer tasks and less reserved is better (negative weights);
    binpack: the same scorers with positive weights. The image scorer is a small
    tie-breaker in both. `weights` overrides magnitudes by scorer name.
    """
    if strategy not in ("spread", "binpack"):
        raise ValueError(f"unknown strategy {strategy!r}: use 'spread' or 'binpack'")
    magnitudes = {**DEFAULT_WEIGHTS, **(weights or {})}
    sign = 1.0 if strategy == "binpack" else -1.0
    return [
        Weighted(ReservedScorer(), sign * magnitudes["reserved"]),
        Weighted(TaskCountScorer(), sign * magnitudes["task_count"]),
        Weighted(ImageScorer(), magnitudes["image"]),
    ]


class ScoreBoard:
    """Weighted, normalized scores for one task group over its candidate nodes.

    `initial[i]` is the score of `candidates[i]` when the group starts; `score`
    recomputes one node's score after it took a task, on the same scale.
    """

    def __init__(
        self, weighted: Iterable[Weighted], task: Task, candidates: Sequence[NodeInfo]
    ) -> None:
        self._terms: list[tuple[Scorer, float, float]] = []  # scorer, weight / span, low
        self.initial: list[float] = [0.0] * len(candidates)
        for item in weighted:
            if item.weight == 0 or not item.scorer.set_task(task) or not candidates:
                continue
            raw = item.scorer.raw
            raws = [raw(info) for info in candidates]
            low, high = min(raws), max(raws)
            factor = item.weight / max(high - low, item.scorer.unit)
            self._terms.append((item.scorer, factor, low))
            if high > low:
                self.initial = [
                    s + factor * (r - low) for s, r in zip(self.initial, raws, strict=True)
                ]

    def score(self, info: NodeInfo) -> float:
        """The node's score: the sum of weight x (raw - low) / span; higher wins."""
        return sum(factor * (scorer.raw(info) - low) for scorer, factor, low in self._terms)
