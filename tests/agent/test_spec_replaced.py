"""`ContainerSpec.replaced`: `dataclasses.replace` for the spec, slot by slot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dockyard.agent.runtime.base import (
    ContainerSpec,
    InvalidConfig,
    PortMapping,
    RestartPolicy,
    RestartPolicyName,
    VolumeMount,
)


def _spec() -> ContainerSpec:
    return ContainerSpec(
        id="",
        name="web.1.abc",
        image="busybox",
        lower_dirs=(),
        command=("sleep", "1"),
        env=("A=1",),
        labels={"k": "v"},
        network="bridge",
        ports=(PortMapping(80, "tcp", 8080),),
        restart_policy=RestartPolicy(RestartPolicyName.ON_FAILURE, 3),
        ulimits=(("nofile", 1, 2),),
        console_size=(24, 80),
    )


def test_replaced_is_replace() -> None:
    spec = _spec()
    changes = {
        "id": "f" * 64,
        "image": "docker.io/library/busybox:latest",
        "lower_dirs": (Path("/l1"),),
        "image_config": {"Cmd": ["sh"]},
        "volumes": (VolumeMount(Path("/h"), "/c", True),),
        "ephemeral": True,
    }
    got = spec.replaced(**changes)
    assert got == dataclasses.replace(spec, **changes)  # type: ignore[arg-type]
    assert type(got) is ContainerSpec and got.id == "f" * 64 and spec.id == ""
    assert spec.replaced() == spec and spec.replaced() is not spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.name = "x"  # type: ignore[misc]


def test_replaced_checks_as_the_constructor_does() -> None:
    with pytest.raises(TypeError, match="no field 'nmae'"):
        _spec().replaced(nmae="x")
    with pytest.raises(InvalidConfig, match="published ports need the bridge"):
        _spec().replaced(network="none")
