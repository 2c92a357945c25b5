"""`run`/`create` check their flags before any request, and fail like docker (exit 125)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from click.testing import CliRunner

from dockyard.cli.commands.container_run import (
    RunError,
    RunFlags,
    build_request,
    parse_env,
    parse_restart,
    parse_volume,
)
from dockyard.cli.main import cli
from tests.ports import free_port


@pytest.fixture
def closed() -> str:
    return f"127.0.0.1:{free_port()}"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"DOCKYARD_HOST": None, "DOCKYARD_CONTEXT": None}
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory", "12q"], "dockyard: invalid --memory '12q': invalid size"),
        (["--memory", "1k"], "dockyard: invalid --memory '1k': the minimum memory limit is 6m"),
        (["-e", "=x"], "dockyard: invalid -e '=x': the variable name is empty"),
        (["-e", "A B=1"], "dockyard: invalid -e 'A B=1': the variable name must not contain"),
        (["-v", "/data"], "dockyard: invalid -v '/data': use HOST_PATH|VOLUME:CONTAINER_PATH"),
        (["-v", "../data:/data"], "the source must be an absolute host path or a volume name"),
        (["-v", "/a:b"], "dockyard: invalid -v '/a:b': the container path must be absolute"),
        (["-v", "/a:/b:rx"], "dockyard: invalid -v '/a:/b:rx': unknown mode 'rx'"),
        (["--restart", "sometimes"], "dockyard: invalid --restart 'sometimes': use one of no,"),
        (["--restart", "always:3"], "only on-failure takes a maximum retry count"),
        (["--restart", "on-failure:x"], "the maximum retry count must be a whole number"),
        (["--rm", "--restart", "always"], "dockyard: --rm and --restart always conflict"),
        (["--cpus", "0"], "dockyard: invalid --cpus '0': must be a number greater than 0"),
        (["--cpus", "-1"], "dockyard: invalid --cpus '-1': must be a number greater than 0"),
        (["--cpus", "lots"], "dockyard: invalid --cpus 'lots': not a number"),
        (["--cpus", "nan"], "dockyard: invalid --cpus 'nan': must be a number greater than 0"),
        (["--pids-limit", "-5"], "dockyard: invalid --pids-limit '-5'"),
        (["--network", "overlay"], "dockyard: invalid --network 'overlay': use one of none,"),
        (["--pull", "sometimes"], "dockyard: invalid --pull 'sometimes'"),
        (["-w", "rel/dir"], "dockyard: invalid -w 'rel/dir': the working directory must be"),
        (["--name", "-bad"], "dockyard: invalid --name '-bad'"),
        (["--cap-add", "NET ADMIN"], "dockyard: invalid --cap-add 'NET ADMIN'"),
        (["--hostname", "a_b"], "dockyard: invalid --hostname 'a_b'"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["container", "run"], ["container", "create"]])
def test_bad_flags_exit_125_before_any_request(
    closed: str, command: list[str], flags: list[str], message: str
) -> None:
    code, out, err = invoke("-H", closed, *command, *flags, "busybox", "true")
    assert code == 125, err
    assert message in err
    assert "cannot reach" not in err
    assert err.count("\n") == 1 and out == ""


def test_usage_errors_of_run_exit_125(closed: str) -> None:
    code, _, err = invoke("-H", closed, "run")
    assert code == 125 and "Missing argument 'IMAGE'" in err
    code, _, err = invoke("-H", closed, "run", "--no-such-flag", "busybox")
    assert code == 125 and "No such option" in err


def test_good_flags_reach_the_agent_and_a_daemon_error_exits_125(closed: str) -> None:
    code, _, err = invoke(
        "-H",
        closed,
        "run",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "-e",
        "A=1",
        "-v",
        "/tmp:/mnt:ro",
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        "echo hi",
    )
    assert code == 125
    assert err == f"dockyard: cannot reach agent at {closed}: connection refused\n"


def test_command_words_after_the_image_are_not_flags() -> None:
    # `run IMAGE ls -l`: -l belongs to the command, not to run.
    code, _, err = invoke("-H", "127.0.0.1:1", "run", "--rm", "busybox", "ls", "-l", "--cpus", "x")
    assert code == 125 and "cannot reach agent" in err


def test_build_request_maps_every_flag() -> None:
    request = build_request(
        RunFlags(
            image="busybox",
            command=("sh", "-c", "true"),
            name="web",
            env=("A=1", "HOME", "B"),
            workdir="/srv",
            user="nobody",
            memory="64m",
            cpus="0.5",
            pids_limit="32",
            read_only=True,
            volumes=("/data/:/data:ro", "/tmp:/scratch"),
            restart="on-failure:3",
            network="host",
            cap_add=("net_admin", "CAP_SYS_TIME"),
            cap_drop=("ALL",),
            hostname="box",
            entrypoint="",
            rm=False,
        ),
        environ={"HOME": "/root"},
    )
    assert request.image == "busybox" and list(request.command) == ["sh", "-c", "true"]
    assert list(request.env) == ["A=1", "HOME=/root"]  # B is unset here: dropped, as docker
    assert request.memory_bytes == 64 * 1024**2 and request.nano_cpus == 500_000_000
    assert request.pids_limit == 32 and request.read_only and request.network == "host"
    assert [(v.host_path, v.container_path, v.read_only) for v in request.volumes] == [
        ("/data", "/data", True),
        ("/tmp", "/scratch", False),
    ]
    assert (request.restart_policy.name, request.restart_policy.max_retries) == ("on-failure", 3)
    assert list(request.cap_add) == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert list(request.cap_drop) == ["ALL"]
    assert request.clear_entrypoint and not request.entrypoint
    assert request.hostname == "box" and request.workdir == "/srv" and request.user == "nobody"


def test_entrypoint_is_one_word_and_restart_defaults() -> None:
    request = build_request(RunFlags(image="busybox", entrypoint="/bin/sh -x"))
    assert list(request.entrypoint) == ["/bin/sh -x"] and not request.clear_entrypoint
    assert parse_restart("no") == ("no", 0) and parse_restart("on-failure") == ("on-failure", 0)
    assert parse_volume("/a:/b").read_only is False
    assert parse_env(["K=", "K2=a=b"], {}) == ["K=", "K2=a=b"]
    with pytest.raises(RunError):
        parse_restart("on-failure:-1")


@pytest.fixture
def not_an_agent() -> Iterator[str]:
    """A gRPC server serving nothing: answers UNIMPLEMENTED, as a controller does here."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    "args",
    [
        ["ps"],
        ["container", "ls", "-a"],
        ["images"],
        ["logs", "web"],
        ["exec", "web", "true"],
        ["container", "stop", "web"],
        ["image", "rm", "busybox"],
        ["pull", "busybox"],
    ],
)
def test_a_controller_is_told_apart(not_an_agent: str, args: list[str]) -> None:
    code, _, err = invoke("-H", not_an_agent, *args)
    assert code == 1
    assert err == (f"dockyard: {not_an_agent} is not an agent: it does not serve this request\n")


def test_run_against_a_controller_exits_125(not_an_agent: str) -> None:
    code, _, err = invoke("-H", not_an_agent, "run", "busybox")
    assert code == 125 and "is not an agent" in err and err.count("\n") == 1


def test_logs_flags_are_checked_locally(closed: str) -> None:
    code, _, err = invoke("-H", closed, "logs", "--since", "yesterday", "web")
    assert code == 2 and "invalid time 'yesterday'" in err
    code, _, err = invoke("-H", closed, "logs", "--tail", "many", "web")
    assert code == 2 and "'many' is not a number or 'all'" in err
    code, _, err = invoke("-H", closed, "exec", "-w", "rel", "web", "true")
    assert code == 1 and "invalid -w 'rel'" in err and "cannot reach" not in err
