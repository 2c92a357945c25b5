"""What a controller's orchestrator hands on from one leader term to its next.

The view is kept across terms (controller/state.py, `follow`), and so is one change
tracker of the orchestrator's: a new term of the same controller plans the services the
last term did not finish (a round not written whole: its term ended, a write failed),
those waiting for a timed re-plan, those being updated, and those whose record, tasks
or nodes changed in the view since (the other leaders' writes included: they are in
etcd, so in the view), but for their own stored creates (`settled.py`). The others
were planned, their plans stored, and nothing planning reads of them moved: planning
them again would plan nothing, and at 30,000 tasks it cost the new term a second of its
loop. A controller that never led, or whose orchestrator crashed, plans every service.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dockyard.controller.orchestrators.settled import Created, node_key
from dockyard.controller.orchestrators.survivors import UNDER_WAY
from dockyard.controller.state import ChangeTracker, ClusterState

__all__ = ["PlanningCarry"]


@dataclass
class PlanningCarry:
    """One controller's, for the orchestrators of all its terms (one at a time).

    Args:
        state: the controller's view, kept across terms.
    """

    state: ClusterState
    tracker: ChangeTracker | None = None
    """The orchestrator's changes, tracked from its first term on (between terms too)."""
    unplanned: set[str] | None = None
    """Services a term took to plan and did not plan and store; None: not known (plan
    every service)."""
    node_keys: dict[str, bytes] = field(default_factory=dict)
    """What planning last read of each node (`settled.node_key`)."""
    created: dict[str, Created] = field(default_factory=dict)
    """The services whose last plan only created tasks, all stored (`settled.py`):
    their own creates, which the tracker holds too, need no plan in the next term."""

    def begin(self) -> tuple[ChangeTracker, set[str], ChangeTracker | None]:
        """A term's start: the tracker its orchestrator takes changes from, the services
        it must plan first, and the changes since the last term (None: every service is
        planned, and the node keys are read from the view now)."""
        state = self.state
        if self.tracker is None:
            self.tracker = state.track(status_changes=False, task_ids=True)
        if self.unplanned is None:
            self.tracker.take()
            self.created.clear()
            self.node_keys.clear()
            self.node_keys.update({i: node_key(n) for i, n in state.nodes.items()})
            everything = set(state.services) | {t.service_id for t in state.tasks.values()}
            self.unplanned = everything
            return self.tracker, set(everything), None
        updating = {s.id for s in state.services.values() if s.update_status.state in UNDER_WAY}
        return self.tracker, self.unplanned | updating, self.tracker.take()

    def planned(self, service_ids: set[str]) -> None:
        """A round planned these services and stored every plan's writes."""
        if self.unplanned is not None:
            self.unplanned -= service_ids

    def taken(self, service_ids: set[str]) -> None:
        """A round is about to plan these (until `planned`, the next term must)."""
        if self.unplanned is not None:
            self.unplanned |= service_ids

    def forget(self) -> None:
        """Nothing is known (the orchestrator crashed): the next start plans all."""
        self.unplanned = None

    def close(self) -> None:
        """The controller stops: the tracker is let go of."""
        if self.tracker is not None:
            self.state.untrack(self.tracker)
            self.tracker = None
        self.unplanned = None
