"""Dockerfile words and config instructions: Docker's substitution and quote rules, the
config each instruction leaves, and what `docker commit --change` refuses."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.agent.build.config_steps import (
    ConfigState,
    apply_changes,
    apply_config,
    parse_changes,
)
from dockyard.agent.build.dockerfile import DockerfileError, expand, parse

ENV = {"A": "1", "NAME": "world", "EMPTY": ""}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$A", "1"),
        ("${A}x", "1x"),
        ("pre-$NAME-post", "pre-world-post"),
        ("${MISSING:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${A:-fallback}", "1"),
        ("${A:+alt}", "alt"),
        ("${MISSING:+alt}", ""),
        ("'$A'", "$A"),
        ('"$A and $NAME"', "1 and world"),
        (r"\$A", "$A"),
        ('"two words"', "two words"),
        ("$", "$"),
        ("${MISSING:-${NAME}}", "world"),
    ],
)
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


@pytest.mark.parametrize("word", ["'open", '"open', "${A", "${}", "${A?x}"])
def test_expand_refuses_malformed(word: str) -> None:
    with pytest.raises(DockerfileError):
        expand(word, ENV)


def test_parse_continuations_forms_and_lines() -> None:
    steps = parse(
        "# comment\nFROM busybox AS b\nRUN echo a \\\n    && echo b\n"
        'CMD ["sh", "-c", "x"]\nCOPY --chown=1:2 --from=b a /b/\n'
    )
    assert [s.cmd for s in steps] == ["FROM", "RUN", "CMD", "COPY"]
    assert steps[1].line == 3 and not steps[1].json
    assert steps[2].json and steps[2].values == ("sh", "-c", "x")
    assert steps[3].flag("chown") == "1:2" and steps[3].flag("from") == "b"
    assert steps[3].values == ("a", "/b/")


def test_parse_bounds() -> None:
    with pytest.raises(DockerfileError, match="larger than"):
        parse("FROM busybox\n" + "# x\n" * 300_000)


def _apply(text: str, runtime: dict[str, Any], state: ConfigState | None = None) -> None:
    state = state or ConfigState()
    for step in parse(text):
        apply_config(step, runtime, state, {"V": "from-env"})


def test_config_instructions() -> None:
    runtime: dict[str, Any] = {"Cmd": ["sh"], "Env": ["PATH=/bin"]}
    _apply(
        'ENV A=1 B="two words"\nENV PATH=/usr/bin\nLABEL "k"="v" x=$V\n'
        "EXPOSE 80 53/udp\nWORKDIR /a\nWORKDIR b\nUSER nobody\nVOLUME /data\n"
        "STOPSIGNAL SIGINT\nENTRYPOINT echo hi\n",
        runtime,
    )
    assert runtime["Env"] == ["A=1", "B=two words", "PATH=/usr/bin"]
    assert runtime["Labels"] == {"k": "v", "x": "from-env"}
    assert runtime["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert runtime["WorkingDir"] == "/a/b"
    assert runtime["User"] == "nobody"
    assert runtime["Volumes"] == {"/data": {}}
    assert runtime["StopSignal"] == "SIGINT"
    assert runtime["Entrypoint"] == ["/bin/sh", "-c", "echo hi"]
    assert runtime["Cmd"] is None  # an inherited CMD goes with a new ENTRYPOINT


def test_cmd_in_the_stage_survives_entrypoint_and_shell_is_used() -> None:
    runtime: dict[str, Any] = {}
    _apply('SHELL ["/bin/bash", "-xc"]\nCMD run me\nENTRYPOINT ["tini"]\n', runtime)
    assert runtime["Cmd"] == ["/bin/bash", "-xc", "run me"]
    assert runtime["Entrypoint"] == ["tini"]


def test_commit_changes() -> None:
    runtime: dict[str, Any] = {"Cmd": ["sh"], "Env": []}
    apply_changes(parse_changes(['CMD ["a"]', "ENV X=1", '["USER 1000"]']), runtime)
    assert runtime == {"Cmd": ["a"], "Env": ["X=1"], "User": "1000"}
    with pytest.raises(DockerfileError, match="RUN is not a valid change command"):
        apply_changes(["RUN rm -rf /"], runtime)
    with pytest.raises(DockerfileError, match="invalid port"):
        apply_changes(["EXPOSE eighty"], runtime)


def test_healthcheck_and_onbuild() -> None:
    runtime: dict[str, Any] = {}
    _apply(
        "HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD wget -q x || exit 1\n"
        "ONBUILD RUN echo later\n",
        runtime,
    )
    assert runtime["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q x || exit 1"],
        "Interval": 90 * 10**9,
        "Timeout": 500 * 10**6,
        "Retries": 3,
    }
    assert runtime["OnBuild"] == ["RUN echo later"]
    _apply("HEALTHCHECK NONE\n", runtime)
    assert runtime["Healthcheck"] == {"Test": ["NONE"]}
    with pytest.raises(DockerfileError, match="invalid duration"):
        _apply("HEALTHCHECK --interval=5 CMD true\n", runtime)


def test_heredocs_are_marked() -> None:
    steps = parse("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\nRUN echo c\n")
    assert [s.heredocs for s in steps] == [False, True, False]
