"""Fixtures of the chaos suite: the registry's busybox for the runc scenario.

The rigs themselves (etcd members, controllers, agents, the invariant checker) are
built and closed by each scenario (tests/chaos/rig.py), so the soak can build a fresh
one per run.
"""

from __future__ import annotations

from tests.agent.conftest import image_registry

__all__ = ["image_registry"]
