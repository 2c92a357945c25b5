"""--format's Go-template subset (cli/template.py) and --filter's semantics (cli/filters.py)."""

from __future__ import annotations

import json

import click
import pytest

from dockyard.cli.filters import Filters
from dockyard.cli.template import TemplateError, parse, render_all

RECORD = {"ID": "abc123", "Name": "web", "Labels": {"tier": "front"}, "Ports": ["80", "443"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{.Name}}", "web"),
        ("{{ .ID }}: {{.Name}}", "abc123: web"),
        ("{{json .Labels}}", '{"tier":"front"}'),
        ("{{.Labels.tier}}", "front"),
        ("{{upper .Name}}", "WEB"),
        ("{{.Name | upper}}", "WEB"),
        ("{{.Name | upper | lower}}", "web"),
        ('{{join .Ports ","}}', "80,443"),
        ("{{len .Ports}}", "2"),
        ("{{title .Name}}", "Web"),
        ('{{"lit\\u0065ral"}}', "literal"),
        ("{{.Name}}\\t{{.ID}}", "web\tabc123"),
        ("{{.Ports}}", "[80 443]"),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert render_all(text, [RECORD]) == [expected]


def test_json_of_dot_is_the_whole_record() -> None:
    [line] = render_all("{{json .}}", [RECORD])
    assert json.loads(line) == RECORD
    assert [json.loads(line) for line in render_all("json", [RECORD, RECORD])] == [RECORD] * 2


def test_table_format_has_a_header_and_aligned_columns() -> None:
    lines = render_all(
        "table {{.ID}}\\t{{.Name}}\\t{{json .Labels}}",
        [RECORD, {**RECORD, "ID": "z", "Name": "database"}],
    )
    assert lines == [
        "ID       NAME       LABELS",
        'abc123   web        {"tier":"front"}',
        'z        database   {"tier":"front"}',
    ]
    assert render_all("table {{.CreatedAt}}", [{"CreatedAt": "1"}])[0] == "CREATED AT"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{.Nope}}", "no field .Nope (fields: .ID, .Name, .Labels, .Ports)"),
        ("{{printf .Name}}", "unknown function or value 'printf'"),
        ("{{upper}}", "upper takes 1 argument, got 0"),
        ("{{join .Ports}}", "join takes 2 arguments, got 1"),
        ("{{.Name.First}}", "cannot take .First of 'web'"),
        ("{{.Name", "unclosed action"),
        ("{{}}", "empty action"),
        ("{{.Name | }}", "empty command"),
        ("{{.Name .ID}}", ".Name is not a function"),
    ],
)
def test_errors_name_the_action(text: str, message: str) -> None:
    with pytest.raises(
        TemplateError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
    ):
        render_all(text, [RECORD])


def test_a_template_is_bounded() -> None:
    with pytest.raises(TemplateError, match="at most 4096"):
        parse("{{.Name}}" * 1000)


def test_filters_follow_docker() -> None:
    filters = Filters(
        ["name=we", "name=db", "label=tier", "label=zone=eu", "id=ab"], ("id", "name", "label")
    )
    assert filters.substring("name", "web") and filters.substring("name", "mydb")
    assert not filters.substring("name", "cache")
    assert filters.labels({"tier": "x", "zone": "eu"})
    assert not filters.labels({"tier": "x", "zone": "us"})
    assert not filters.labels({"zone": "eu"})
    assert filters.prefix("id", "abc") and not filters.prefix("id", "bac")
    assert filters.exact("mode", "anything")  # not given: matches
    assert Filters(["reference=busybox:*"], ("reference",)).glob("reference", "busybox:1.36")
    assert Filters(["dangling=true"], ("dangling",)).flag("dangling") is True
    with pytest.raises(click.BadParameter, match=r"unknown filter 'status' \(known: id, name\)"):
        Filters(["status=exited"], ("id", "name"))
    with pytest.raises(click.BadParameter, match="use KEY=VALUE"):
        Filters(["status"], ("status",))
    with pytest.raises(click.BadParameter, match="dangling takes true or false"):
        Filters(["dangling=maybe"], ("dangling",)).flag("dangling")
