"""`--network NAME[,alias=A]` and `--endpoint-mode` of `service create/update`."""

from __future__ import annotations

import pytest

from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import apply_settings, new_spec


def spec_of(values: dict[str, object]) -> object:
    return apply_settings(new_spec("busybox"), values)


def test_several_networks_with_aliases() -> None:
    spec = spec_of({"network": ["front", "name=back,alias=db,alias=store"]})
    attached = [(a.target, list(a.aliases)) for a in spec.task.networks]  # type: ignore[attr-defined]
    assert attached == [("front", []), ("back", ["db", "store"])]
    assert spec.task.container.network == ""  # type: ignore[attr-defined]


def test_a_node_local_mode_stays_the_container_network() -> None:
    spec = spec_of({"network": ["bridge"], "endpoint-mode": "dnsrr"})
    assert spec.task.container.network == "bridge"  # type: ignore[attr-defined]
    assert list(spec.task.networks) == []  # type: ignore[attr-defined]
    assert spec.task.endpoint_mode == "dnsrr"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"network": ["host", "front"]}, "cannot be combined with other networks"),
        ({"network": ["name=host,alias=x"]}, "it takes no alias"),
        ({"network": ["name=front,alias=-x"]}, "alias '-x' is not a DNS name"),
        ({"network": ["name=front,ip=10.0.0.1"]}, "unknown network option 'ip'"),
        ({"endpoint-mode": "ipvs"}, "use one of vip, dnsrr"),
    ],
)
def test_refusals_name_the_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(values)
