"""What `dockyard top` shows, kept from the controller's JSON lists and event stream:
nodes, services and pending tasks. Pure data (no terminal, no network), so the rules
are tested alone: an event older than the record held is ignored, as the dashboard does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CURRENT", "ClusterModel", "NodeRow", "PendingRow", "ServiceRow"]

CURRENT = frozenset({"NEW", "PENDING", "ASSIGNED", "ACCEPTED", "PREPARING", "STARTING", "RUNNING"})
HOLDING = frozenset({"ASSIGNED", "ACCEPTED", "PREPARING", "STARTING", "RUNNING"})
WAITING = frozenset({"NEW", "PENDING"})


def _version(record: dict[str, Any] | None) -> int:
    return int(((record or {}).get("meta") or {}).get("version") or 0)


@dataclass(frozen=True)
class NodeRow:
    name: str
    state: str
    availability: str
    tasks: int
    cpus_reserved: float
    cpus: float
    memory_reserved: int
    memory: int


@dataclass(frozen=True)
class ServiceRow:
    name: str
    mode: str
    running: int
    desired: int
    image: str
    update: str


@dataclass(frozen=True)
class PendingRow:
    task: str
    state: str
    reason: str


@dataclass
class ClusterModel:
    """Records by ID, as the controller's JSON gives them."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0

    def load(
        self,
        nodes: Iterable[dict[str, Any]],
        services: Iterable[dict[str, Any]],
        tasks: Iterable[dict[str, Any]],
    ) -> None:
        """Replace everything: `/v1/nodes`, `/v1/services` (summaries), `/v1/tasks`."""
        self.nodes = {n["id"]: n for n in nodes}
        self.services = {s["service"]["id"]: s["service"] for s in services}
        self.tasks = {t["id"]: t for t in tasks}

    def apply(self, event: dict[str, Any]) -> bool:
        """One `/v1/events` event; whether it changed anything."""
        held = {"node": self.nodes, "service": self.services, "task": self.tasks}.get(
            str(event.get("kind"))
        )
        if held is None:
            return False
        key = str(event.get("id"))
        if key in held and _version(held[key]) >= int(event.get("revision") or 0):
            return False  # we hold newer
        if event.get("type") == "removed":
            held.pop(key, None)
        else:
            held[key] = event.get("record") or {}
        self.events += 1
        return True

    def _current(self) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if t.get("desired_state") in CURRENT]

    def node_rows(self) -> list[NodeRow]:
        """Down nodes first, then by name; reservations of the tasks that hold one."""
        reserved: dict[str, list[float]] = {}
        for t in self._current():
            state = (t.get("status") or {}).get("state", "")
            if not t.get("node_id") or state not in HOLDING:
                continue
            res = ((t.get("spec") or {}).get("resources") or {}).get("reservations") or {}
            entry = reserved.setdefault(t["node_id"], [0, 0.0, 0])
            entry[0] += 1
            entry[1] += int(res.get("nano_cpus") or 0) / 1e9
            entry[2] += int(res.get("memory_bytes") or 0)
        rows = []
        for n in self.nodes.values():
            total = (n.get("description") or {}).get("resources") or {}
            count, cpus, memory = reserved.get(n["id"], [0, 0.0, 0])
            rows.append(
                NodeRow(
                    n["spec"]["name"],
                    (n.get("status") or {}).get("state", ""),
                    n["spec"].get("availability", ""),
                    int(count),
                    float(cpus),
                    int(total.get("nano_cpus") or 0) / 1e9,
                    int(memory),
                    int(total.get("memory_bytes") or 0),
                )
            )
        return sorted(rows, key=lambda r: (r.state == "READY", r.name))

    def service_rows(self) -> list[ServiceRow]:
        counts: dict[str, list[int]] = {}
        for t in self._current():
            entry = counts.setdefault(t.get("service_id", ""), [0, 0])
            if t.get("desired_state") == "RUNNING":
                entry[1] += 1
                if (t.get("status") or {}).get("state") == "RUNNING":
                    entry[0] += 1
        rows = []
        for s in self.services.values():
            spec = s.get("spec") or {}
            running, wanted = counts.get(s["id"], [0, 0])
            if "replicated" in spec:
                mode, desired = "replicated", int(spec["replicated"].get("replicas") or 0)
            elif "global" in spec:
                mode, desired = "global", wanted
            else:
                mode, desired = "job", wanted
            update = s.get("update_status") or {}
            state = update.get("state", "")
            state = "" if state in ("", "STATE_UNSPECIFIED") else state
            cause = f"{state}: {update['message']}" if state and update.get("message") else state
            image = ((spec.get("task") or {}).get("container") or {}).get("image", "")
            rows.append(ServiceRow(spec.get("name", ""), mode, running, desired, image, cause))
        return sorted(rows, key=lambda r: r.name)

    def pending_rows(self) -> list[PendingRow]:
        """Tasks not yet on a node, with the scheduler's reason."""
        rows = []
        for t in self._current():
            status = t.get("status") or {}
            if status.get("state") not in WAITING:
                continue
            slot = t.get("slot") or (t.get("node_id") or "")[:12]
            rows.append(
                PendingRow(
                    f"{t.get('service_name', '')}.{slot}",
                    status["state"],
                    status.get("error") or status.get("message") or "",
                )
            )
        return sorted(rows, key=lambda r: r.task)
