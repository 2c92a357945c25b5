"""Variables in compose files, as the compose specification interpolates them.

`$VAR` and `${VAR}` (empty when unset, with a warning), `${VAR:-default}` (unset or
empty), `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (an error naming
the variable), `${VAR:+alternative}` / `${VAR+alternative}`, and `$$` for a literal `$`.
Defaults and alternatives may hold variables themselves. Only values are interpolated,
never keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.cli.commands.service_parse import SpecError

__all__ = ["Interpolator"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


@dataclass
class Interpolator:
    """Interpolates documents from `environ`; `unset` lists the variables that were
    used without a value (each once, in order) for the caller to warn about."""

    environ: Mapping[str, str]
    unset: list[str] = field(default_factory=list)

    def document(self, value: Any, where: str = "") -> Any:
        if isinstance(value, str):
            return self.text(value, where)
        if isinstance(value, Mapping):
            return {
                k: self.document(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.document(v, f"{where}.{i}") for i, v in enumerate(value)]
        return value

    def text(self, text: str, where: str = "") -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char != "$" or i + 1 == len(text):
                out.append(char)
                i += 1
                continue
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
            elif following == "{":
                end = _closing(text, i + 2, where)
                out.append(self._braced(text[i + 2 : end], where))
                i = end + 1
            elif match := _NAME.match(text, i + 1):
                out.append(self._value(match.group(), where))
                i = match.end()
            else:
                out.append(char)
                i += 1
        return "".join(out)

    def _value(self, name: str, where: str) -> str:
        if name in self.environ:
            return self.environ[name]
        if name not in self.unset:
            self.unset.append(name)
        return ""

    def _braced(self, inner: str, where: str) -> str:
        match = _NAME.match(inner)
        if not match:
            raise SpecError(f"{where}: invalid interpolation format: ${{{inner}}}")
        name, rest = match.group(), inner[match.end() :]
        if not rest:
            return self._value(name, where)
        operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
        if operator is None:
            raise SpecError(f"{where}: invalid interpolation format: ${{{inner}}}")
        argument = rest[len(operator) :]
        found = self.environ.get(name)
        present = found is not None and (found != "" or not operator.startswith(":"))
        if operator.endswith("-"):
            return found if present and found is not None else self.text(argument, where)
        if operator.endswith("+"):
            return self.text(argument, where) if present else ""
        if not present or found is None:  # `?`: required
            message = self.text(argument, where) or "required variable is missing a value"
            raise SpecError(f"{where}: variable {name} is not set: {message}")
        return found


def _closing(text: str, start: int, where: str) -> int:
    """The index of the `}` closing a `${` whose content starts at `start`."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise SpecError(f"{where}: invalid interpolation format: {text!r} (an unclosed ${{)")
