"""The scheduler: a pure library of filters, scorers and placement decisions, and
the loop that runs it (`loop.py`, as orchestrators/ has its planners and their loop).

The library never touches etcd or the network. The loop (`SchedulingLoop`) feeds it
`NodeInfo` records and the tasks waiting for a node, and writes the decisions of
`Scheduler.schedule` in batches. `check_placement` validates a service's
placement for the API. The loop is not imported here: the library stays importable
without the store.
"""

from __future__ import annotations

from .constraints import (
    Constraint,
    ConstraintError,
    check_placement,
    parse_constraint,
    parse_constraints,
    spread_label,
)
from .filters import (
    AvailabilityFilter,
    ConstraintFilter,
    Filter,
    HostPortFilter,
    MaxReplicasFilter,
    ReadyFilter,
    ResourceFilter,
    default_filters,
)
from .nodeinfo import Amount, NodeInfo
from .pipeline import Pipeline
from .scheduler import Scheduler, SchedulingResult, group_tasks
from .scorers import (
    ImageScorer,
    ReservedScorer,
    ScoreBoard,
    Scorer,
    Strategy,
    TaskCountScorer,
    Weighted,
    strategy_scorers,
)

__all__ = [
    "Amount",
    "AvailabilityFilter",
    "Constraint",
    "ConstraintError",
    "ConstraintFilter",
    "Filter",
    "HostPortFilter",
    "ImageScorer",
    "MaxReplicasFilter",
    "NodeInfo",
    "Pipeline",
    "ReadyFilter",
    "ReservedScorer",
    "ResourceFilter",
    "Scheduler",
    "SchedulingResult",
    "ScoreBoard",
    "Scorer",
    "Strategy",
    "TaskCountScorer",
    "Weighted",
    "check_placement",
    "default_filters",
    "group_tasks",
    "parse_constraint",
    "parse_constraints",
    "spread_label",
    "strategy_scorers",
]
