"""The compose loader without a cluster: the schema, Swarm's rules, merging, interpolation,
env files and paths relative to the compose file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.cli.commands.compose import interpolate, load_stack, stack_from_documents
from dockyard.cli.commands.compose_interpolate import Interpolator
from dockyard.cli.commands.service_parse import SpecError

BASE = {"image": "busybox"}


def doc(**service: Any) -> dict[str, Any]:
    return {"services": {"web": {**BASE, **service}}}


# --- the schema: typos name their key path, nothing is built --------------------------

TYPOS = [
    (
        doc(deploy={"update_config": {"paralelism": 2}}),
        "services.web.deploy.update_config.paralelism: additional property not allowed",
    ),
    (doc(enviroment={"A": "1"}), "services.web.enviroment: additional property not allowed"),
    (
        doc(deploy={"resources": {"limits": {"memroy": "1G"}}}),
        "services.web.deploy.resources.limits.memroy: additional property not allowed",
    ),
    (doc(ports=[{"targt": 80}]), "services.web.ports.0.targt: additional property not allowed"),
    (
        doc(healthcheck={"test": "true", "intervl": "5s"}),
        "services.web.healthcheck.intervl: additional property not allowed",
    ),
    (
        doc(deploy={"restart_policy": {"condtion": "any"}}),
        "services.web.deploy.restart_policy.condtion: additional property not allowed",
    ),
    (
        doc(deploy={"placement": {"constraint": ["node.role==manager"]}}),
        "services.web.deploy.placement.constraint: additional property not allowed",
    ),
    (
        doc(volumes=[{"type": "bind", "source": "/a", "target": "/b", "readonly": True}]),
        "services.web.volumes.0.readonly: additional property not allowed",
    ),
    (
        {**doc(), "secrets": {"db": {"fille": "db.txt"}}},
        "secrets.db.fille: additional property not allowed",
    ),
    ({**doc(), "servies": {}}, "servies: additional property not allowed"),
    (
        doc(deploy={"placement": {"constraints": "node.role==manager"}}),
        "services.web.deploy.placement.constraints: 'node.role==manager' is not of type 'array'",
    ),
    (doc(environment=3), "services.web.environment: 3 is not of type object or array"),
]


@pytest.mark.parametrize(("document", "message"), TYPOS)
def test_schema_errors_name_the_key_path(document: Any, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        stack_from_documents("s", [("typo.yml", document)], {})
    assert raised.value.message.startswith("typo.yml: does not follow the compose specification")
    assert message in raised.value.message


def test_every_typo_of_a_file_is_listed() -> None:
    document = doc(colour="red", deploy={"replicaz": 2})
    with pytest.raises(SpecError) as raised:
        stack_from_documents("s", [("c.yml", document)], {})
    assert "services.web.colour" in raised.value.message
    assert "services.web.deploy.replicaz" in raised.value.message


def test_extension_keys_are_accepted_everywhere_and_ignored() -> None:
    document = {
        "x-top": {"anything": [1, 2]},
        "services": {
            "web": {
                **BASE,
                "x-service": 1,
                "deploy": {"x-deploy": 1, "update_config": {"x-update": 1, "parallelism": 1}},
                "ports": [{"target": 80, "x-port": 1}],
                "healthcheck": {"test": "true", "x-health": 1},
            }
        },
        "secrets": {"db": {"external": True, "x-secret": 1}},
    }
    stack = stack_from_documents("s", [("c.yml", document)], {})
    assert stack.ignored == []
    assert stack.specs["web"].update.parallelism == 1


def test_keys_swarm_ignores_are_listed_one_path_each() -> None:
    document = doc(
        build=".",
        container_name="web",
        restart="always",
        depends_on=["db"],
        deploy={"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}},
        ports=[{"target": 80, "host_ip": "127.0.0.1"}],
    )
    document["volumes"] = {"data": {"driver": "local"}}
    stack = stack_from_documents("s", [("c.yml", document)], {})
    assert stack.ignored == [
        "volumes.data.driver",
        "services.web.build",
        "services.web.container_name",
        "services.web.restart",
        "services.web.depends_on",
        "services.web.deploy.resources.reservations.devices",
        "services.web.ports[0].host_ip",
    ]


def test_networks_and_endpoint_mode_are_carried_through() -> None:
    document = doc(
        networks={"front": {"aliases": ["www"]}},
        deploy={"endpoint_mode": "dnsrr"},
        ports=[{"target": 80, "published": 8080, "mode": "host"}],
    )
    document["networks"] = {"front": {"driver": "overlay"}}
    stack = stack_from_documents("s", [("c.yml", document)], {})
    web = stack.services["web"]
    assert web.networks == {"front": {"aliases": ["www"]}}
    assert web.endpoint_mode == "dnsrr"
    assert web.ports == [{"target": 80, "published": 8080, "mode": "host"}]
    assert stack.networks == {"front": {"driver": "overlay"}}
    assert stack.ignored == []


# --- merging several files ---------------------------------------------------------------


def test_a_later_file_overrides_fields_not_services() -> None:
    first = {
        "services": {
            "web": {
                "image": "busybox:1",
                "command": ["sleep", "1"],
                "environment": {"A": "1", "B": "2"},
                "ports": ["8080:80", "9090:90"],
                "volumes": ["/a:/data", "/logs:/logs"],
                "labels": ["tier=front"],
                "dns": ["1.1.1.1"],
                "deploy": {"replicas": 2, "update_config": {"parallelism": 1}},
            },
            "db": {"image": "postgres"},
        }
    }
    second = {
        "services": {
            "web": {
                "image": "busybox:2",
                "command": ["sleep", "2"],
                "environment": ["B=3", "C=4"],
                "ports": ["8080:80", "7070:70"],
                "volumes": ["/b:/data"],
                "labels": {"team": "web"},
                "dns": ["8.8.8.8"],
                "deploy": {"update_config": {"delay": "5s"}},
            }
        }
    }
    stack = stack_from_documents("s", [("a.yml", first), ("b.yml", second)], {})
    web = stack.specs["web"]
    container = web.task.container
    assert container.image == "busybox:2"
    assert list(container.command) == ["sleep", "2"]
    assert list(container.env) == ["A=1", "B=3", "C=4"]
    assert sorted((p.published_port, p.target_port) for p in web.task.ports) == [
        (7070, 70),
        (8080, 80),
        (9090, 90),
    ]
    assert [(m.source, m.target) for m in container.mounts] == [("/b", "/data"), ("/logs", "/logs")]
    assert dict(container.labels) == {
        "tier": "front",
        "team": "web",
        "com.docker.stack.namespace": "s",
    }
    assert stack.services["web"].document["dns"] == ["1.1.1.1", "8.8.8.8"]
    assert (web.replicated.replicas, web.update.parallelism, web.update.delay_seconds) == (2, 1, 5)
    assert stack.specs["db"].task.container.image == "postgres"


# --- interpolation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${SET}", "yes"),
        ("$SET-$EMPTY-", "yes--"),
        ("${UNSET:-d}|${EMPTY:-d}|${SET:-d}", "d|d|yes"),
        ("${UNSET-d}|${EMPTY-d}|${SET-d}", "d||yes"),
        ("${UNSET:+a}|${EMPTY:+a}|${SET:+a}", "||a"),
        ("${UNSET+a}|${EMPTY+a}|${SET+a}", "|a|a"),
        ("${UNSET:-${SET}x}", "yesx"),
        ("$$SET $${SET}", "$SET ${SET}"),
        ("${SET:?must}", "yes"),
        ("cost: 5$", "cost: 5$"),
    ],
)
def test_interpolation_operators(text: str, expected: str) -> None:
    assert interpolate(text, {"SET": "yes", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${DB_PASSWORD:?set the database password}", "DB_PASSWORD is not set: set the database"),
        ("${EMPTY:?}", "variable EMPTY is not set"),
        ("${UNSET?needed}", "variable UNSET is not set: needed"),
        ("${oops", "unclosed"),
        ("${1A}", "invalid interpolation format"),
    ],
)
def test_interpolation_errors_name_the_variable(text: str, message: str) -> None:
    document = doc(environment={"X": text})
    with pytest.raises(SpecError, match=message):
        stack_from_documents("s", [("c.yml", document)], {"EMPTY": ""})


def test_each_unset_variable_is_warned_once() -> None:
    interpolator = Interpolator({})
    assert interpolator.document({"a": "$A ${A} ${B}", "b": ["${C:-x}"]}) == {
        "a": "  ",
        "b": ["x"],
    }
    assert interpolator.unset == ["A", "B"]
    stack = stack_from_documents("s", [("c.yml", doc(image="busybox:${TAG}"))], {})
    assert stack.warnings == ['The "TAG" variable is not set. Defaulting to a blank string.']


def test_environment_values_as_docker_writes_them() -> None:
    document = doc(
        environment={"FLAG": True, "OFF": False, "N": 3, "F": 1.5, "SHELL_ONE": None, "GONE": None}
    )
    stack = stack_from_documents("s", [("c.yml", document)], {"SHELL_ONE": "from shell"})
    assert list(stack.specs["web"].task.container.env) == [
        "FLAG=true",
        "OFF=false",
        "N=3",
        "F=1.5",
        "SHELL_ONE=from shell",
    ]
    listed = doc(environment=["A=1", "SHELL_ONE", "GONE"])
    stack = stack_from_documents("s", [("c.yml", listed)], {"SHELL_ONE": "x"})
    assert list(stack.specs["web"].task.container.env) == ["A=1", "SHELL_ONE=x"]


# --- files relative to the compose file ----------------------------------------------------


def test_env_files_and_bind_paths_are_relative_to_the_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "common.env").write_text(
        "# a comment\n\nA=from file\nexport B='quoted'\nC=\"dq\"\nFROM_SHELL\nD=kept\n"
    )
    (app / "c.yml").write_text(
        yaml.safe_dump(
            doc(
                env_file=["common.env", {"path": "missing.env", "required": False}],
                environment={"D": "overridden"},
                volumes=["./data:/data", "../shared:/shared:ro", "named:/named"],
            )
        )
    )
    monkeypatch.chdir(tmp_path)
    stack = load_stack("s", ["app/c.yml"], {"FROM_SHELL": "shell"})
    container = stack.specs["web"].task.container
    assert list(container.env) == [
        "A=from file",
        "B=quoted",
        "C=dq",
        "FROM_SHELL=shell",
        "D=overridden",
    ]
    assert [(m.type, m.source, m.target, m.read_only) for m in container.mounts] == [
        ("bind", str(app / "data"), "/data", False),
        ("bind", str(tmp_path / "shared"), "/shared", True),
        ("volume", "named", "/named", False),
    ]
    missing = app / "bad.yml"
    missing.write_text(yaml.safe_dump(doc(env_file="nope.env")))
    with pytest.raises(SpecError, match=r"bad.yml: services.web.env_file: cannot read env file"):
        load_stack("s", [str(missing)], {})


def test_port_ranges_and_long_form_ports() -> None:
    document = doc(
        ports=[
            "8000-8002:9000-9002",
            "7000-7001:70/udp",
            "6000-6001",
            {"target": 80, "published": 8080, "protocol": "tcp"},
        ]
    )
    ports = stack_from_documents("s", [("c.yml", document)], {}).specs["web"].task.ports
    assert [(p.published_port, p.target_port, p.protocol) for p in ports] == [
        (8000, 9000, "tcp"),
        (8001, 9001, "tcp"),
        (8002, 9002, "tcp"),
        (7000, 70, "udp"),
        (7001, 70, "udp"),
        (0, 6000, "tcp"),
        (0, 6001, "tcp"),
        (8080, 80, "tcp"),
    ]
    with pytest.raises(SpecError, match="differ in length"):
        stack_from_documents("s", [("c.yml", doc(ports=["1-3:1-2"]))], {})


def test_anonymous_volumes_are_the_slots_own_named_volumes() -> None:
    document = doc(volumes=["/data", {"type": "volume", "target": "/cache"}])
    mounts = stack_from_documents("s", [("c.yml", document)], {}).specs["web"].task.container.mounts
    assert [(m.type, m.target) for m in mounts] == [("volume", "/data"), ("volume", "/cache")]
    assert all(m.source.startswith("{{.Service.Name}}-{{.Task.Slot}}-") for m in mounts)
    assert mounts[0].source != mounts[1].source
