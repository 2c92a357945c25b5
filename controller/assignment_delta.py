"""Delta assignment sets: what a node's agent is told when a few of its tasks change.

A full set replaces everything an agent holds; a delta names the tasks added or
changed and the tasks gone, against the set of `base_version` sent on the same
session. The agent applies a delta only on top of exactly that set and otherwise asks
for a full one (agent/session.py), so a lost or reordered delta never makes it stop a
task. `compose` folds a delta into a set still waiting in a node's outbox (which
keeps one message of each kind), so the chain of versions the agent sees has no gap.
"""

from __future__ import annotations

from dockyard.common.task_refs import referenced
from dockyard.v1.dispatcher_pb2 import AssignmentSet

__all__ = ["compose"]


def compose(older: AssignmentSet, newer: AssignmentSet) -> AssignmentSet | None:
    """``older`` then ``newer`` as one set (a full one if ``older`` is full); None when
    ``newer`` is a delta that does not follow ``older`` (the agent then asks again)."""
    if newer.full:
        return newer
    if newer.base_version != older.version:
        return None
    merged = AssignmentSet(full=older.full, version=newer.version, base_version=older.base_version)
    replaced = {task.id for task in newer.tasks}
    gone = set(newer.removed_task_ids)
    merged.tasks.extend(t for t in older.tasks if t.id not in replaced and t.id not in gone)
    merged.tasks.extend(newer.tasks)
    if not older.full:
        removed = dict.fromkeys([*older.removed_task_ids, *newer.removed_task_ids])
        merged.removed_task_ids.extend(i for i in removed if i not in replaced)
    secrets = {s.id: s for s in [*older.secrets, *newer.secrets]}
    configs = {c.id: c for c in [*older.configs, *newer.configs]}
    if older.full:  # a full set holds exactly the secrets and configs of its tasks
        secret_ids, config_ids = referenced(merged.tasks)
        secrets = {i: s for i, s in secrets.items() if i in secret_ids}
        configs = {i: c for i, c in configs.items() if i in config_ids}
    merged.secrets.extend(secrets.values())
    merged.configs.extend(configs.values())
    sources = {s.image: s for s in [*older.image_sources, *newer.image_sources]}
    merged.image_sources.extend(sources.values())
    for service_id, auth in [*older.registry_auths.items(), *newer.registry_auths.items()]:
        merged.registry_auths[service_id].CopyFrom(auth)
    return merged
