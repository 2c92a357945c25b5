"""`--secret` flags and compose `secrets:` to SecretReferences (no cluster needed)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from dockyard.cli.commands.compose import stack_from_documents
from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import apply_list_edits, apply_settings, new_spec


def refs(spec: Any) -> list[tuple[str, str, int, int, int]]:
    return [(r.secret_name, r.target, r.uid, r.gid, r.mode) for r in spec.task.container.secrets]


def test_secret_flags_short_and_long_form_and_update_edits() -> None:
    spec = apply_settings(
        new_spec("busybox"),
        {"secret": ["db", "source=api,target=key.txt,uid=1000,gid=1001,mode=0400"]},
    )
    assert refs(spec) == [("db", "db", 0, 0, 0o444), ("api", "key.txt", 1000, 1001, 0o400)]
    apply_list_edits(spec, "secret", ["source=api_v2,target=key.txt"], ["api"])
    assert refs(spec) == [("db", "db", 0, 0, 0o444), ("api_v2", "key.txt", 0, 0, 0o444)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "source=",
        "source=a,bogus=1",
        "source=a,target=../x",
        "source=a,mode=999",
        "source=a,uid=x",
        "-a",
    ],
)
def test_bad_secret_flags_are_refused(text: str) -> None:
    with pytest.raises(SpecError, match="--secret"):
        apply_settings(new_spec("busybox"), {"secret": [text]})


COMPOSE = """
services:
  web:
    image: busybox
    secrets:
      - db
      - source: api
        target: key.txt
        uid: "1000"
        mode: 0440
secrets:
  db:
    external: true
  api:
    external: true
    name: api_key_v3
"""


def test_compose_secrets_map_to_existing_secrets() -> None:
    stack = stack_from_documents("shop", [("c.yml", yaml.safe_load(COMPOSE))], {})
    assert refs(stack.specs["web"]) == [
        ("db", "db", 0, 0, 0o444),
        ("api_key_v3", "key.txt", 1000, 0, 0o440),
    ]
    assert stack.ignored == []


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"db": {"environment": "DB"}}, "secrets.db.environment: the variable DB is not set"),
        ({"db": {"file": "./x", "environment": "DB"}}, "give one source, not file, environment"),
        ({"db": {}}, "give a `file:`, `environment:` or `content:`"),
        ({}, "not declared"),
    ],
)
def test_compose_secrets_that_cannot_be_honoured_are_refused(top: Any, message: str) -> None:
    doc = {"services": {"web": {"image": "busybox", "secrets": ["db"]}}, "secrets": top}
    with pytest.raises(SpecError, match=message):
        stack_from_documents("shop", [("c.yml", doc)], {})


def test_compose_secrets_from_files_are_the_stacks() -> None:
    doc = {
        "services": {"web": {"image": "busybox", "secrets": ["db"]}},
        "secrets": {"db": {"file": "./db.txt"}},
    }
    stack = stack_from_documents("shop", [("/srv/app/c.yml", doc)], {})
    assert stack.secrets["db"].name == "shop_db"
    assert stack.secrets["db"].file == "/srv/app/db.txt"
    assert refs(stack.specs["web"]) == [("shop_db", "db", 0, 0, 0o444)]


def test_compose_objects_from_a_variable_or_inline_content_are_the_stacks() -> None:
    """`environment: VAR` takes the deploying shell's variable, `content:` (configs) is
    inline; both become STACK_KEY objects, as `file:` does, with their data."""
    from dockyard.cli.commands.stack_objects import read_objects

    doc = {
        "services": {"web": {"image": "busybox", "secrets": ["db"], "configs": ["app", "env"]}},
        "secrets": {"db": {"environment": "DB_PASSWORD"}},
        "configs": {
            "app": {"content": "debug=${DEBUG}\n"},
            "env": {"environment": "APP_CONF", "name": "app_conf_v2"},
        },
    }
    environ = {"DB_PASSWORD": "s3cret", "DEBUG": "1", "APP_CONF": "x=1"}
    stack = stack_from_documents("shop", [("c.yml", doc)], environ)
    assert refs(stack.specs["web"]) == [("shop_db", "db", 0, 0, 0o444)]
    assert read_objects(stack.secrets) == {"shop_db": b"s3cret"}
    assert read_objects(stack.configs) == {"shop_app": b"debug=1\n", "app_conf_v2": b"x=1"}
    assert [c.config_name for c in stack.specs["web"].task.container.configs] == [
        "shop_app",
        "app_conf_v2",
    ]
    assert stack.ignored == []


def test_external_objects_by_their_name() -> None:
    doc = {
        "services": {"web": {"image": "busybox", "secrets": ["a", "b", "c"]}},
        "secrets": {
            "a": {"external": True},
            "b": {"external": True, "name": "real_b"},
            "c": {"external": {"name": "old_style_c"}},
        },
    }
    stack = stack_from_documents("shop", [("c.yml", doc)], {})
    assert [r[0] for r in refs(stack.specs["web"])] == ["a", "real_b", "old_style_c"]
