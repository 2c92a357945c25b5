"""Defaults written into a stored spec: explicit zeros stay zeros."""

from __future__ import annotations

from dockyard.controller.services import apply_defaults
from dockyard.v1.workloads_pb2 import RestartPolicy, ServiceSpec, UpdateConfig


def base() -> ServiceSpec:
    spec = ServiceSpec(name="web")
    spec.task.container.image = "busybox"
    spec.replicated.replicas = 1
    return spec


def test_an_unset_stop_grace_becomes_ten_seconds_and_zero_stays_zero() -> None:
    assert apply_defaults(base()).task.container.stop_grace_seconds == 10.0
    immediate = base()
    immediate.task.container.stop_grace_seconds = 0
    filled = apply_defaults(immediate)
    assert filled.task.container.HasField("stop_grace_seconds")
    assert filled.task.container.stop_grace_seconds == 0.0


def test_docker_defaults_for_restart_and_update() -> None:
    filled = apply_defaults(base())
    assert filled.task.restart_policy.condition == RestartPolicy.ANY
    assert filled.task.restart_policy.delay_seconds == 5.0
    assert filled.update.parallelism == 1
    assert filled.update.order == UpdateConfig.STOP_FIRST
    assert filled.update.failure_action == UpdateConfig.PAUSE
