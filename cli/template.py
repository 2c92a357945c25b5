"""`--format`: a bounded subset of Go's text/template, as docker's CLI uses it.

Supported (and nothing else; anything else is an error naming the action):
  text with `{{ action }}` actions; `\\t` and `\\n` in the text are a tab and a newline
  `.`  `.Field`  `.Field.Sub`   a record's field (case as listed by `{{json .}}`)
  "string"                      a double-quoted literal (Go escapes)
  json ARG                      ARG as compact JSON
  upper ARG / lower ARG / title ARG
  join ARG "SEP"                a list's items joined with SEP
  len ARG                       the length of a string, list or map
  ARG | FUNC ...                a pipeline: the left value becomes FUNC's last argument
  `table ` prefix               a header row from the field names, columns aligned on tabs
Plus the names `json` (one JSON object per line) and `table` (the default table).

No maintained Python package renders Go templates (the one on PyPI wraps Go through
CGo at version 0.0.x), so this is a small recursive-descent evaluator with a test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_TEMPLATE = 4096
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\|)|([^\s|"]+))')
_FIELD = re.compile(r"^(\.[A-Za-z_][A-Za-z0-9_]*)+$|^\.$")


class TemplateError(ValueError):
    """The --format text is not in the supported subset (the message says where)."""


def _text(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _join(items: Any, sep: Any) -> str:
    if not isinstance(items, (list, tuple)):
        raise TemplateError(f"join: expected a list, got {_text(items)!r}")
    return str(sep).join(_text(i) for i in items)


_FUNCTIONS: dict[str, tuple[int, Any]] = {
    "json": (1, lambda v: json.dumps(v, separators=(",", ":"))),
    "upper": (1, lambda v: _text(v).upper()),
    "lower": (1, lambda v: _text(v).lower()),
    "title": (1, lambda v: _text(v).title()),
    "len": (1, lambda v: len(v) if isinstance(v, (str, list, tuple, Mapping)) else 0),
    "join": (2, _join),
}


@dataclass(frozen=True)
class _Term:
    kind: str  # "field", "string", "function"
    value: str


def _lookup(record: Any, path: str, action: str) -> Any:
    value = record
    if path == ".":
        return value
    for name in path.split(".")[1:]:
        if not isinstance(value, Mapping):
            raise TemplateError(f"{{{{{action}}}}}: cannot take .{name} of {_text(value)!r}")
        if name not in value:
            known = ", ".join(f".{k}" for k in value) or "none"
            raise TemplateError(f"{{{{{action}}}}}: no field .{name} (fields: {known})")
        value = value[name]
    return value


def _tokens(action: str) -> list[list[_Term]]:
    """An action as a pipeline: commands separated by |, each a list of terms."""
    commands: list[list[_Term]] = [[]]
    position = 0
    while position < len(action):
        match = _TOKEN.match(action, position)
        if match is None or match.end() == position:
            raise TemplateError(f"{{{{{action}}}}}: cannot parse at {action[position:]!r}")
        position = match.end()
        quoted, pipe, word = match.groups()
        if pipe:
            commands.append([])
        elif quoted:
            try:
                commands[-1].append(_Term("string", json.loads(quoted)))
            except json.JSONDecodeError as exc:
                raise TemplateError(f"{{{{{action}}}}}: bad string {quoted}") from exc
        elif word:
            if _FIELD.match(word):
                commands[-1].append(_Term("field", word))
            elif word in _FUNCTIONS:
                commands[-1].append(_Term("function", word))
            else:
                raise TemplateError(
                    f"{{{{{action}}}}}: unknown function or value {word!r} "
                    f"(supported: {', '.join(sorted(_FUNCTIONS))})"
                )
    if any(not command for command in commands):
        raise TemplateError(f"{{{{{action}}}}}: empty command in the pipeline")
    return commands


def _evaluate(commands: list[list[_Term]], record: Any, action: str) -> Any:
    piped: list[Any] = []
    result: Any = None
    for command in commands:
        head, *rest = command
        args = [
            _lookup(record, t.value, action) if t.kind == "field" else t.value for t in rest
        ] + piped
        if head.kind == "function":
            arity, function = _FUNCTIONS[head.value]
            if len(args) != arity:
                raise TemplateError(
                    f"{{{{{action}}}}}: {head.value} takes {arity} "
                    f"argument{'s' if arity > 1 else ''}, got {len(args)}"
                )
            if any(t.kind == "function" for t in rest):
                raise TemplateError(f"{{{{{action}}}}}: use a pipeline to nest functions")
            result = function(*args)
        elif rest or piped:
            raise TemplateError(f"{{{{{action}}}}}: {head.value} is not a function")
        else:
            result = _lookup(record, head.value, action) if head.kind == "field" else head.value
        piped = [result]
    return result


@dataclass(frozen=True)
class Template:
    """A parsed --format: alternating text and actions."""

    parts: tuple[str | list[list[_Term]], ...]
    actions: tuple[str, ...]
    is_table: bool

    def render(self, record: Any) -> str:
        out = []
        action = iter(self.actions)
        for part in self.parts:
            out.append(
                part if isinstance(part, str) else _text(_evaluate(part, record, next(action)))
            )
        return "".join(out)

    def header(self) -> str:
        """The header row of a `table` format: each action shows its field's name."""
        out = []
        action = iter(self.actions)
        for part in self.parts:
            out.append(part if isinstance(part, str) else _header_name(next(action)))
        return "".join(out)


def _header_name(action: str) -> str:
    """`.CreatedAt` -> CREATED AT; `json .Labels` -> LABELS; `.` -> empty."""
    fields = re.findall(r"\.[A-Za-z_][A-Za-z0-9_.]*", action)
    if not fields:
        return ""
    last: str = str(fields[0]).rsplit(".", 1)[-1]
    if last.isupper():
        return last
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", last).upper()


def parse(text: str) -> Template:
    """Parse a --format text (not `json`/`table`, which callers handle)."""
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"--format is {len(text)} characters long; at most {MAX_TEMPLATE}")
    is_table = text.startswith("table ") or text.startswith("table\t")
    if is_table:
        text = text[len("table") :].lstrip(" ")
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    parts: list[str | list[list[_Term]]] = []
    actions: list[str] = []
    position = 0
    for match in _ACTION.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        action = match.group(1)
        if not action:
            raise TemplateError("--format: empty action {{}}")
        parts.append(_tokens(action))
        actions.append(action)
        position = match.end()
    rest = text[position:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"--format: unclosed action in {rest!r}")
    if rest:
        parts.append(rest)
    return Template(tuple(parts), tuple(actions), is_table)


def render_all(format_text: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lines `--format` prints for `records` (a `table` format: aligned, with a header)."""
    if format_text == "json":
        return [json.dumps(r, separators=(",", ":")) for r in records]
    template = parse(format_text)
    lines = [template.render(r) for r in records]
    if not template.is_table:
        return lines
    from dockyard.cli.render import table

    rows = [line.split("\t") for line in [template.header(), *lines]]
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]
    return table(rows[0], rows[1:]).splitlines()
