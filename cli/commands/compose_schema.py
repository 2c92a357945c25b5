"""Compose files checked against the compose specification's JSON schema.

The schema is the one the compose specification publishes (vendored in
`compose_spec/`, see its README for where it comes from). Every error names the
key path (`services.web.deploy.update_config.paralelism: additional property not
allowed`), so a typo is refused before anything is sent to the cluster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from dockyard.cli.commands.service_parse import SpecError

__all__ = ["schema_errors", "validate_document"]

SCHEMA = Path(__file__).parent / "compose_spec" / "compose-spec.json"
MAX_ERRORS = 20


@cache
def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _deepest(error: ValidationError) -> ValidationError:
    """The most specific reason of a oneOf/anyOf failure: the branch that got furthest."""
    while error.context and not all(e.validator == "type" for e in error.context):
        error = max(error.context, key=lambda e: (len(e.absolute_path), -_weak(e)))
    return error


def _weak(error: ValidationError) -> int:
    # A type mismatch in a branch says less than a wrong key in the branch that fits.
    return 1 if error.validator == "type" else 0


def _known(schema: Any) -> tuple[set[str], list[str]]:
    """The property names and name patterns a schema (and the allOf it refers to) allows."""
    names, patterns = set(schema.get("properties", {})), list(schema.get("patternProperties", {}))
    for part in schema.get("allOf", []):
        ref = part.get("$ref", "")
        found = part
        if ref.startswith("#/$defs/"):
            found = _schema()["$defs"][ref.removeprefix("#/$defs/")]
        more_names, more_patterns = _known(found)
        names |= more_names
        patterns += more_patterns
    return names, patterns


def _unexpected(error: ValidationError) -> list[str]:
    if not isinstance(error.instance, dict) or not isinstance(error.schema, dict):
        return []
    names, patterns = _known(error.schema)
    return [
        str(key)
        for key in error.instance
        if key not in names and not any(re.search(p, str(key)) for p in patterns)
    ]


def _describe(error: ValidationError) -> list[str]:
    where = list(error.absolute_path)
    if error.context and all(e.validator == "type" for e in error.context):
        kinds = " or ".join(dict.fromkeys(str(e.validator_value) for e in error.context))
        return [f"{_path(where)}: {error.instance!r} is not of type {kinds}"]
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        # A failed allOf branch leaves every key of the object "unevaluated": only keys
        # the schema does not know at all are wrong here (the branch's own error says more).
        return [
            f"{_path([*where, n])}: additional property not allowed" for n in _unexpected(error)
        ]
    return [f"{_path(where)}: {error.message}"]


def schema_errors(document: Any) -> list[str]:
    """Every violation of the compose schema, each naming its key path."""
    found: list[str] = []
    for error in sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.path))):
        for line in _describe(_deepest(error)):
            if line not in found:
                found.append(line)
    return found


def validate_document(source: str, document: Any) -> None:
    """Raise SpecError listing the violations of one file (at most MAX_ERRORS)."""
    errors = schema_errors(document)
    if not errors:
        return
    more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
    listed = "\n  ".join(errors[:MAX_ERRORS])
    raise SpecError(f"{source}: does not follow the compose specification:\n  {listed}{more}")
