"""`--publish` of services: ranges, the long form with `mode=ingress|host`, compose's
long-form `ports[].mode`."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.cli.commands.compose_service import service_values
from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import apply_list_edits, apply_settings, new_spec


def ports_of(spec: Any) -> list[tuple[int, int, str, str]]:
    return [(p.published_port, p.target_port, p.protocol, p.publish_mode) for p in spec.task.ports]


def test_short_form_ranges_and_long_form_modes() -> None:
    spec = apply_settings(
        new_spec("busybox"),
        {
            "publish": [
                "8080-8081:80-81",
                "published=9000,target=90,protocol=udp,mode=host",
                "published=9100,target=91,mode=ingress",
                "53/udp",
            ]
        },
    )
    assert ports_of(spec) == [
        (8080, 80, "tcp", "ingress"),
        (8081, 81, "tcp", "ingress"),
        (9000, 90, "udp", "host"),
        (9100, 91, "tcp", "ingress"),
        (0, 53, "udp", "ingress"),
    ]


def test_update_adds_and_removes_ranges() -> None:
    spec = apply_settings(new_spec("busybox"), {"publish": ["8080-8082:80-82"]})
    apply_list_edits(spec, "publish", ["published=8082,target=8,mode=ingress"], ["8080-8081"])
    assert ports_of(spec) == [(8082, 8, "tcp", "ingress")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8080-8082:80-81", "the two ranges differ in length"),
        ("published=8080,target=80,mode=mesh", "the mode must be ingress or host"),
        ("published=8080,mode=host", "target= is required"),
        ("published=80,target=80,ip=1.2.3.4", "unknown or empty option 'ip'"),
        ("8090-8080:80", "a range goes up"),
        ("70000:80", "between 1 and 65535"),
        ("8080:80/sctp", "the protocol must be tcp or udp"),
    ],
)
def test_refusals_name_the_value(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        apply_settings(new_spec("busybox"), {"publish": [text]})


def test_compose_long_form_mode_reaches_the_spec() -> None:
    service = {
        "image": "busybox",
        "ports": [
            {"target": 80, "published": "8080-8081", "mode": "host"},
            {"target": 443, "published": 8443, "protocol": "tcp", "mode": "ingress"},
            "9000:90",
        ],
    }
    values, _ = service_values("services.web", service, {}, {})
    spec = apply_settings(new_spec("busybox"), values)
    assert ports_of(spec) == [
        (8080, 80, "tcp", "host"),
        (8081, 80, "tcp", "host"),
        (8443, 443, "tcp", "ingress"),
        (9000, 90, "tcp", "ingress"),
    ]


def test_no_mode_is_the_routing_mesh_as_in_swarm() -> None:
    """`-p 8080:80`, `-p 80` and `target=80` are ingress ports; `published` 0 asks the
    leader for one (30000-32767); compose's `ports: ["80"]` too."""
    spec = apply_settings(new_spec("busybox"), {"publish": ["8080:80", "81", "target=82", "83-84"]})
    assert ports_of(spec) == [
        (8080, 80, "tcp", "ingress"),
        (0, 81, "tcp", "ingress"),
        (0, 82, "tcp", "ingress"),
        (0, 83, "tcp", "ingress"),
        (0, 84, "tcp", "ingress"),
    ]
    values, _ = service_values("services.web", {"image": "busybox", "ports": ["80"]}, {}, {})
    assert ports_of(apply_settings(new_spec("busybox"), values)) == [(0, 80, "tcp", "ingress")]


def test_publish_rm_names_an_allocated_port_by_its_target() -> None:
    spec = apply_settings(
        new_spec("busybox"), {"publish": ["8080:80", "published=30001,target=81"]}
    )
    apply_list_edits(spec, "publish", [], ["81"])
    assert ports_of(spec) == [(8080, 80, "tcp", "ingress")]
