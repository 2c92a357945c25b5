"""Dockerfiles read with Docker's own parser, and the variable substitution of its words.

The parsing (continuation lines, comments, JSON and shell forms, flags, heredocs) is
the moby/buildkit parser itself, through PyPI's ``dockerfile`` (a binding of it); what
that parser leaves to the builder, ``$VAR``/``${VAR}``/``${VAR:-x}``/``${VAR:+x}``
substitution and the removal of quotes, is :func:`expand` (Docker's ``ShellLex``
rules for the instructions that take it: ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER
VOLUME WORKDIR ARG).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dockerfile

__all__ = [
    "MAX_DOCKERFILE_BYTES",
    "DockerfileError",
    "Instruction",
    "expand",
    "parse",
]

MAX_DOCKERFILE_BYTES = 1 << 20
"""The largest Dockerfile read (dockerd's own limit is higher; none is this long)."""
MAX_INSTRUCTIONS = 4096


class DockerfileError(ValueError):
    """A Dockerfile (or a ``docker commit --change``) that cannot be used; the message
    names the instruction and its line."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction: ``cmd`` upper-case, ``values`` as the parser split them."""

    cmd: str
    values: tuple[str, ...]
    flags: tuple[str, ...]
    json: bool
    original: str
    line: int
    heredocs: bool = False

    def where(self) -> str:
        """``line 3: RUN false`` for error messages."""
        return f"line {self.line}: {self.original[:200]}"

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value``, or None when absent."""
        prefix = f"--{name}="
        found = [f[len(prefix) :] for f in self.flags if f.startswith(prefix)]
        return found[-1] if found else None


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile.

    Raises:
        DockerfileError: too long, or a syntax error (with its line).
    """
    if len(text.encode()) > MAX_DOCKERFILE_BYTES:
        raise DockerfileError(f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes")
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise DockerfileError(f"Dockerfile parse error: {exc}") from None
    if len(commands) > MAX_INSTRUCTIONS:
        raise DockerfileError(f"the Dockerfile has more than {MAX_INSTRUCTIONS} instructions")
    return [
        Instruction(
            cmd=c.cmd.upper(),
            values=tuple(c.value),
            flags=tuple(c.flags),
            json=bool(c.json),
            original=c.original,
            line=c.start_line,
            heredocs=bool(c.heredocs),
        )
        for c in commands
    ]


class _Lexer:
    """One word's substitution and quote removal (Docker's ShellLex.ProcessWord)."""

    def __init__(self, word: str, env: Mapping[str, str]) -> None:
        self.word = word
        self.env = env
        self.pos = 0

    def peek(self) -> str:
        return self.word[self.pos] if self.pos < len(self.word) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1
        return char

    def run(self) -> str:
        out: list[str] = []
        while self.pos < len(self.word):
            char = self.take()
            if char == "'":
                end = self.word.find("'", self.pos)
                if end < 0:
                    raise DockerfileError(f"unexpected end of statement in {self.word!r}")
                out.append(self.word[self.pos : end])
                self.pos = end + 1
            elif char == '"':
                out.append(self.double_quoted())
            elif char == "\\":
                out.append(self.take())
            elif char == "$":
                out.append(self.variable())
            else:
                out.append(char)
        return "".join(out)

    def double_quoted(self) -> str:
        out: list[str] = []
        while True:
            char = self.take()
            if char == "":
                raise DockerfileError(f"unexpected end of statement in {self.word!r}")
            if char == '"':
                return "".join(out)
            if char == "\\" and self.peek() in ('"', "\\", "$"):
                out.append(self.take())
            elif char == "$":
                out.append(self.variable())
            else:
                out.append(char)

    def name(self) -> str:
        start = self.pos
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.pos += 1
        return self.word[start : self.pos]

    def variable(self) -> str:
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.pos += 1
        name = self.name()
        if not name:
            raise DockerfileError(f"bad substitution in {self.word!r}")
        if self.peek() == "}":
            self.pos += 1
            return self.env.get(name, "")
        if self.word[self.pos : self.pos + 2] not in (":-", ":+"):
            raise DockerfileError(f"unsupported modifier in {self.word!r}")
        modifier = self.word[self.pos : self.pos + 2]
        self.pos += 2
        depth, start = 1, self.pos
        while depth:
            char = self.take()
            if char == "":
                raise DockerfileError(f"missing '}}' in {self.word!r}")
            depth += {"{": 1, "}": -1}.get(char, 0)
        alternative = _Lexer(self.word[start : self.pos - 1], self.env).run()
        value = self.env.get(name, "")
        if modifier == ":-":
            return value or alternative
        return alternative if value else ""


def expand(word: str, env: Mapping[str, str]) -> str:
    """``word`` with ``$VAR``, ``${VAR}``, ``${VAR:-x}``, ``${VAR:+x}`` substituted from
    ``env`` and its quotes and escapes removed.

    Raises:
        DockerfileError: an unterminated quote or a malformed ``${...}``.
    """
    return _Lexer(word, env).run()
