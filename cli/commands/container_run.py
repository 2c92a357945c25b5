"""`dockyard container run|create`: flags checked locally, then pull, create, start, attach.

Like docker, `run` exits 125 when the failure is its own (a bad flag, a daemon
error) and with the container's exit code otherwise.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from dockyard.cli.client import CliError, Target, call, rpc_code, stream
from dockyard.cli.options import GlobalOptions, pass_options
from dockyard.common.privilege import parse_capability as capability
from dockyard.common.validation import CONTAINER_NAME_PATTERN, VOLUME_NAME_PATTERN

F = TypeVar("F", bound=Callable[..., Any])
AGENT = "agent"
RUN_ERROR = 125
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
PULL_POLICIES = ("missing", "always", "never")
NETWORKS = ("none", "host", "bridge")
MAX_PUBLISHED = 256
"""Most ports one container publishes (the agent's limit too)."""
MIN_MEMORY = 6 * 1024 * 1024
_ENV_KEY = re.compile(r"^[^=\s]+$")
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})$")


class RunError(CliError):
    """A failure of `run`/`create` itself: one line, exit code 125."""

    exit_code = RUN_ERROR


class RunUsageError(click.UsageError):
    exit_code = RUN_ERROR


class RunCommand(click.Command):
    """Usage errors (unknown flag, missing IMAGE) exit 125 too, as docker's do."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise RunUsageError(exc.format_message(), exc.ctx) from exc


def _invalid(flag: str, value: str, why: str) -> RunError:
    return RunError(f"invalid {flag} {value!r}: {why}")


def parse_env(items: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """`-e K=V`; a bare `-e K` takes K from this shell's environment, or is dropped."""
    result = []
    for item in items:
        key, eq, _ = item.partition("=")
        if not key:
            raise _invalid("-e", item, "the variable name is empty (use KEY=VALUE)")
        if not _ENV_KEY.match(key):
            raise _invalid("-e", item, "the variable name must not contain whitespace")
        if eq:
            result.append(item)
        elif key in environ:
            result.append(f"{key}={environ[key]}")
    return result


@dataclass(frozen=True)
class Volume:
    host_path: str
    container_path: str
    read_only: bool
    volume: str = ""  # a named volume instead of host_path


def parse_volume(text: str) -> Volume:
    """`-v /host:/ctr[:ro|rw]` (a bind mount) or `-v NAME:/ctr[:ro|rw]` (a named volume)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise _invalid("-v", text, "use HOST_PATH|VOLUME:CONTAINER_PATH[:ro]")
    host, container = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not host.startswith("/") and not VOLUME_NAME_PATTERN.match(host):
        raise _invalid(
            "-v",
            text,
            "the source must be an absolute host path or a volume name "
            "([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
        )
    if not container.startswith("/"):
        raise _invalid("-v", text, "the container path must be absolute")
    if mode not in ("ro", "rw"):
        raise _invalid("-v", text, f"unknown mode {mode!r} (ro or rw)")
    if not host.startswith("/"):
        return Volume("", os.path.normpath(container), mode == "ro", volume=host)
    return Volume(os.path.normpath(host), os.path.normpath(container), mode == "ro")


def parse_tmpfs(text: str) -> tuple[str, int]:
    """`--tmpfs /path[:size=64m]` (Docker's option list; only size is taken)."""
    path, _, options = text.partition(":")
    if not path.startswith("/"):
        raise _invalid("--tmpfs", text, "the container path must be absolute")
    size = 0
    for option in filter(None, options.split(",")):
        key, eq, value = option.partition("=")
        if key == "size" and eq:
            size = _size("--tmpfs", text, value)
        elif option not in ("rw", "noexec", "nosuid", "nodev"):
            raise _invalid("--tmpfs", text, f"unsupported option {option!r} (size=SIZE)")
    return os.path.normpath(path), size


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


PUBLISH_USAGE = "use [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]"


def _port_range(text: str, what: str, spec: str, allow_zero: bool = False) -> tuple[int, int]:
    """`80` or `8000-8010` to (first, last)."""
    first, dash, last = text.partition("-")
    if (
        not first.isascii()
        or not first.isdigit()
        or (dash and not (last.isascii() and last.isdigit()))
    ):
        raise _invalid("-p", spec, f"{what} {text!r} is not a port number or range")
    low, high = int(first), int(last) if dash else int(first)
    lowest = 0 if allow_zero and not dash else 1
    if not (lowest <= low <= 65535 and lowest <= high <= 65535):
        raise _invalid("-p", spec, f"{what} {text} is not in 1-65535")
    if high < low:
        raise _invalid("-p", spec, f"{what} range {text} ends before it starts")
    return low, high


def parse_publish(spec: str) -> list[PublishedPort]:
    """Docker's `-p`: `80`, `8080:80`, `127.0.0.1:8080:80`, `127.0.0.1::80`, `53:53/udp`,
    and equal-size ranges (`8000-8001:80-81`); a missing host port is picked by the agent."""
    text, slash, protocol = spec.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in ("tcp", "udp"):
        raise _invalid("-p", spec, f"unknown protocol {protocol!r} (tcp or udp)")
    if text.startswith("["):
        raise _invalid("-p", spec, "IPv6 host addresses are not supported")
    parts = text.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise _invalid("-p", spec, PUBLISH_USAGE)
    host_ip = parts[0] if len(parts) == 3 else ""
    host = parts[-2] if len(parts) >= 2 else ""
    if host_ip:
        try:
            address = ipaddress.ip_address(host_ip)
        except ValueError:
            raise _invalid("-p", spec, f"{host_ip!r} is not an IP address") from None
        if address.version != 4:
            raise _invalid("-p", spec, "IPv6 host addresses are not supported")
        host_ip = "" if address.is_unspecified else str(address)
    first, last = _port_range(parts[-1], "container port", spec)
    count = last - first + 1
    if count > MAX_PUBLISHED:
        raise _invalid("-p", spec, f"at most {MAX_PUBLISHED} ports")
    if host:
        host_first, host_last = _port_range(host, "host port", spec, allow_zero=True)
        if host_last - host_first + 1 != count:
            raise _invalid("-p", spec, "the host and container port ranges differ in size")
        hosts = list(range(host_first, host_last + 1))
    else:
        hosts = [0] * count
    return [PublishedPort(host_ip, hosts[i], first + i, protocol) for i in range(count)]


def parse_restart(text: str) -> tuple[str, int]:
    """`no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`."""
    name, colon, count = text.partition(":")
    if name not in RESTART_POLICIES:
        raise _invalid("--restart", text, f"use one of {', '.join(RESTART_POLICIES)}")
    if not colon:
        return name, 0
    if name != "on-failure":
        raise _invalid("--restart", text, "only on-failure takes a maximum retry count")
    if not count.isdigit():
        raise _invalid("--restart", text, "the maximum retry count must be a whole number >= 0")
    return name, int(count)


def _size(flag: str, given: str, text: str) -> int:
    from dockyard.common.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise _invalid(flag, given, str(exc)) from None


def parse_memory(text: str) -> int:
    size = _size("--memory", text, text)
    if 0 < size < MIN_MEMORY:
        raise _invalid("--memory", text, "the minimum memory limit is 6m")
    return size


def parse_cpus(text: str) -> int:
    """`--cpus 0.5` to nano-CPUs."""
    try:
        cpus = float(text)
    except ValueError:
        raise _invalid("--cpus", text, "not a number") from None
    if not (math.isfinite(cpus) and cpus > 0):
        raise _invalid("--cpus", text, "must be a number greater than 0")
    return round(cpus * 1e9)


def parse_pids_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise _invalid("--pids-limit", text, "not a whole number") from None
    if limit < -1:
        raise _invalid("--pids-limit", text, "use -1 or 0 for no limit, or a positive number")
    return limit


def parse_capability(flag: str, text: str) -> str:
    try:
        return capability(text)
    except ValueError as exc:
        raise _invalid(flag, text, str(exc)) from None


def parse_security_opts(options: tuple[str, ...]) -> str:
    """The seccomp mode `--security-opt` asks for ("" for the default profile)."""
    seccomp = ""
    for option in options:
        key, sep, value = option.partition("=")
        if key != "seccomp" or not sep or value not in ("default", "unconfined"):
            raise _invalid(
                "--security-opt", option, "supported: seccomp=unconfined, seccomp=default"
            )
        seccomp = value
    return seccomp


@dataclass
class RunFlags:
    """Everything `run`/`create` take, before validation."""

    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    memory: str | None = None
    cpus: str | None = None
    pids_limit: str | None = None
    read_only: bool = False
    volumes: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    restart: str = "no"
    network: str = "none"
    publish: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    hostname: str | None = None
    entrypoint: str | None = None
    pull: str = "missing"
    rm: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    privileged: bool = False
    security_opt: tuple[str, ...] = ()
    interactive: bool = False
    tty: bool = False


def build_request(flags: RunFlags, environ: Mapping[str, str] | None = None) -> Any:
    """Check every flag and return the CreateContainerRequest; RunError on the first bad one."""
    if flags.name is not None and not CONTAINER_NAME_PATTERN.match(flags.name.removeprefix("/")):
        raise _invalid("--name", flags.name, "use [a-zA-Z0-9][a-zA-Z0-9_.-], at most 128")
    env = parse_env(flags.env, os.environ if environ is None else environ)
    if flags.workdir is not None and not flags.workdir.startswith("/"):
        raise _invalid("-w", flags.workdir, "the working directory must be an absolute path")
    memory = parse_memory(flags.memory) if flags.memory is not None else 0
    nano_cpus = parse_cpus(flags.cpus) if flags.cpus is not None else 0
    pids_limit = parse_pids_limit(flags.pids_limit) if flags.pids_limit is not None else 0
    volumes = [parse_volume(v) for v in flags.volumes]
    tmpfs = [parse_tmpfs(t) for t in flags.tmpfs]
    restart, retries = parse_restart(flags.restart)
    if flags.rm and restart != "no":
        raise RunError(
            f"--rm and --restart {flags.restart} conflict: a removed container cannot restart"
        )
    if flags.network not in NETWORKS:
        raise _invalid("--network", flags.network, f"use one of {', '.join(NETWORKS)}")
    ports = [port for spec in flags.publish for port in parse_publish(spec)]
    if ports and flags.network == "host":
        raise RunError(
            "conflicting options: -p publishes ports on the bridge network, but "
            "with --network host the container uses the host's ports directly"
        )
    if len(ports) > MAX_PUBLISHED:
        raise RunError(f"too many published ports: {len(ports)} (at most {MAX_PUBLISHED})")
    published: list[tuple[str, PublishedPort]] = []
    for spec in flags.publish:
        for port in parse_publish(spec):
            for other_spec, other in published:
                if (
                    port.host_port
                    and (port.host_port, port.protocol) == (other.host_port, other.protocol)
                    and (not port.host_ip or not other.host_ip or port.host_ip == other.host_ip)
                ):
                    raise _invalid(
                        "-p",
                        spec,
                        f"host port {port.host_port}/{port.protocol} is "
                        f"already published by -p {other_spec}",
                    )
            published.append((spec, port))
    if flags.pull not in PULL_POLICIES:
        raise _invalid("--pull", flags.pull, f"use one of {', '.join(PULL_POLICIES)}")
    cap_add = [parse_capability("--cap-add", c) for c in flags.cap_add]
    cap_drop = [parse_capability("--cap-drop", c) for c in flags.cap_drop]
    if flags.hostname is not None and not _HOSTNAME.match(flags.hostname):
        raise _invalid("--hostname", flags.hostname, "not a valid host name")
    seccomp = parse_security_opts(flags.security_opt)
    if not flags.image:
        raise RunError("an image is required")

    from dockyard.v1.containers_pb2 import (
        CreateContainerRequest,
        PortMapping,
        RestartPolicySpec,
        TmpfsSpec,
        VolumeSpec,
    )

    request = CreateContainerRequest(
        image=flags.image,
        name=flags.name or "",
        command=list(flags.command),
        env=env,
        workdir=flags.workdir or "",
        user=flags.user or "",
        memory_bytes=memory,
        nano_cpus=nano_cpus,
        pids_limit=pids_limit,
        read_only=flags.read_only,
        volumes=[
            VolumeSpec(
                host_path=v.host_path,
                container_path=v.container_path,
                read_only=v.read_only,
                volume=v.volume,
            )
            for v in volumes
        ],
        tmpfs=[TmpfsSpec(container_path=path, size_bytes=size) for path, size in tmpfs],
        restart_policy=RestartPolicySpec(name=restart, max_retries=retries),
        network=flags.network,
        ports=[
            PortMapping(
                host_ip=p.host_ip,
                host_port=p.host_port,
                container_port=p.container_port,
                protocol=p.protocol,
            )
            for p in ports
        ],
        labels=flags.labels,
        cap_add=cap_add,
        cap_drop=cap_drop,
        hostname=flags.hostname or "",
        auto_remove=flags.rm,
        privileged=flags.privileged,
        seccomp=seccomp,
        tty=flags.tty,
        open_stdin=flags.interactive,
    )
    if flags.entrypoint is not None:
        if flags.entrypoint:
            request.entrypoint.append(flags.entrypoint)
        else:
            request.clear_entrypoint = True
    return request


def create_options(command: F) -> F:
    """The flags `run` and `create` share, in the order --help lists them."""
    decorators = [
        click.option("--name", default=None, help="Name the container."),
        click.option(
            "-e",
            "--env",
            multiple=True,
            metavar="KEY=VALUE",
            help="Set an environment variable (repeatable).",
        ),
        click.option(
            "-w",
            "--workdir",
            default=None,
            metavar="DIR",
            help="Working directory inside the container.",
        ),
        click.option(
            "-u",
            "--user",
            default=None,
            metavar="USER[:GROUP]",
            help="User (name or UID) to run as.",
        ),
        click.option(
            "-m", "--memory", default=None, metavar="SIZE", help="Memory limit, e.g. 64m or 1g."
        ),
        click.option("--cpus", default=None, metavar="N", help="CPUs to use, e.g. 0.5."),
        click.option(
            "--pids-limit",
            default=None,
            metavar="N",
            help="Maximum number of processes (-1: unlimited).",
        ),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option(
            "--tmpfs",
            "tmpfs",
            multiple=True,
            metavar="PATH[:size=SIZE]",
            help="Mount a tmpfs (repeatable).",
        ),
        click.option(
            "-v",
            "--volume",
            "volumes",
            multiple=True,
            metavar="SRC:CTR[:ro]",
            help="Bind-mount a host directory or a named volume (repeatable).",
        ),
        click.option(
            "--restart",
            default="no",
            show_default=True,
            metavar="no|on-failure[:N]|always|unless-stopped",
            help="Restart policy.",
        ),
        click.option(
            "--network",
            default="none",
            show_default=True,
            metavar="none|host|bridge",
            help="Network mode (publishing a port implies bridge).",
        ),
        click.option(
            "-p",
            "--publish",
            multiple=True,
            metavar="[IP:][HOSTPORT:]CONTAINERPORT[/udp]",
            help="Publish a container port on the agent's host (repeatable).",
        ),
        click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability."),
        click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability."),
        click.option("--hostname", default=None, help="Container host name."),
        click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (attach it)."),
        click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal."),
        click.option(
            "--privileged",
            is_flag=True,
            help="Every capability, no seccomp, no masked paths, the host's devices.",
        ),
        click.option(
            "--security-opt",
            "security_opt",
            multiple=True,
            metavar="seccomp=unconfined",
            help="Security option (repeatable).",
        ),
        click.option(
            "--entrypoint", default=None, help="Replace the image's entrypoint ('' clears it)."
        ),
        click.option(
            "--pull",
            default="missing",
            show_default=True,
            metavar="missing|always|never",
            help="When to pull the image.",
        ),
        click.option("--rm", is_flag=True, help="Remove the container once it exits."),
        click.argument("image", metavar="IMAGE"),
        click.argument("command_args", nargs=-1, type=click.UNPROCESSED, metavar="[CMD]..."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _flags(kwargs: dict[str, Any]) -> RunFlags:
    return RunFlags(
        image=kwargs["image"],
        command=kwargs["command_args"],
        name=kwargs["name"],
        env=kwargs["env"],
        workdir=kwargs["workdir"],
        user=kwargs["user"],
        memory=kwargs["memory"],
        cpus=kwargs["cpus"],
        pids_limit=kwargs["pids_limit"],
        read_only=kwargs["read_only"],
        volumes=kwargs["volumes"],
        tmpfs=kwargs["tmpfs"],
        restart=kwargs["restart"],
        network=kwargs["network"],
        publish=kwargs["publish"],
        cap_add=kwargs["cap_add"],
        cap_drop=kwargs["cap_drop"],
        hostname=kwargs["hostname"],
        entrypoint=kwargs["entrypoint"],
        pull=kwargs["pull"],
        rm=kwargs["rm"],
        privileged=kwargs["privileged"],
        security_opt=kwargs["security_opt"],
        interactive=kwargs["interactive"],
        tty=kwargs["tty"],
    )


def containers_stub(channel: Any) -> Any:
    from dockyard.v1 import containers_pb2_grpc

    return containers_pb2_grpc.ContainersStub(channel)


def ensure_image(target: Target, image: str, policy: str) -> None:
    """`--pull missing`: pull when the agent lacks the image; `always`: pull anyway."""
    import grpc

    from dockyard.cli.commands.images import images_stub, pull_image
    from dockyard.v1.images_pb2 import ImageRef

    if policy == "never":
        return
    if policy == "missing":
        try:
            call(target, images_stub, "Inspect", ImageRef(image=image), what=AGENT)
            return
        except CliError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                raise
        click.echo(f"Unable to find image '{image}' locally", err=True)
    pull_image(target, image, sys.stderr)


def _create(
    options: GlobalOptions, flags: RunFlags, *, auto_remove: bool = True
) -> tuple[Target, Any]:
    request = build_request(flags)  # before any request: bad flags never reach the agent
    request.auto_remove = flags.rm and auto_remove
    target = options.target()
    ensure_image(target, flags.image, flags.pull)
    return target, call(target, containers_stub, "Create", request, what=AGENT)


@click.command("create", cls=RunCommand, context_settings={"allow_interspersed_args": False})
@create_options
@pass_options
def create(options: GlobalOptions, /, **kwargs: Any) -> None:
    """Create a container (pulling its image if needed) and print its ID."""
    try:
        _, record = _create(options, _flags(kwargs))
    except RunError:
        raise
    except CliError as exc:
        raise RunError(exc.message) from exc
    click.echo(record.id)


@click.command("run", cls=RunCommand, context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the ID.")
@click.option(
    "--detach-keys", default="", metavar="KEYS", help="Keys that detach (default ctrl-p,ctrl-q)."
)
@create_options
@pass_options
def run(options: GlobalOptions, /, detach: bool, detach_keys: str, **kwargs: Any) -> None:
    """Run a command in a new container; attached, exit with its exit code."""
    from dockyard.v1.containers_pb2 import ContainerRef

    flags = _flags(kwargs)
    if (flags.interactive or flags.tty) and not detach:
        sys.exit(run_interactive(options, flags, detach_keys))
    if flags.rm and not detach:
        code = run_rm_call(options, flags)
        if code is not None:
            sys.exit(code)
    # Attached, the CLI removes the container after Wait: the agent removing it
    # on exit could win the race with Logs and Wait, and the exit code be lost.
    attached_rm = flags.rm and not detach
    try:
        target, record = _create(options, flags, auto_remove=detach)
        call(target, containers_stub, "Start", ContainerRef(container=record.id), what=AGENT)
    except RunError:
        raise
    except CliError as exc:
        raise RunError(exc.message) from exc
    if detach:
        click.echo(record.id)
        return
    sys.exit(attach(target, record.id, remove=attached_rm))


def run_rm_call(options: GlobalOptions, flags: RunFlags) -> int | None:
    """`run --rm` attached, without -it: one `Run` call (create, start, output, exit,
    removal); the agent removes the container also when this process goes away.
    None: the agent has no `Run` (an older agent); use the separate calls."""
    request = build_request(flags)  # before any request: bad flags never reach the agent
    target = options.target()
    if flags.pull == "always":
        ensure_image(target, flags.image, flags.pull)
    for attempt in range(2):
        try:
            return _run_stream(target, request)
        except _NoImage as exc:
            if attempt or flags.pull != "missing":
                raise RunError(str(exc)) from None
            ensure_image(target, flags.image, flags.pull)  # "Unable to find image", pull
        except _Unimplemented:
            return None
    raise AssertionError("unreachable")


class _NoImage(Exception):
    """`Run` refused before creating: the image is not on the agent."""


class _Unimplemented(Exception):
    """The agent has no `Run`."""


def _run_stream(target: Target, request: Any) -> int:
    import grpc

    created = ""
    result = None
    try:
        for answer in stream(target, containers_stub, "Run", request, what=AGENT):
            kind = answer.WhichOneof("kind")
            if kind == "created":
                created = answer.created.id
            elif kind == "output":
                write_output(answer.output.stream, answer.output.data)
            elif kind == "exit":
                result = answer.exit
    except KeyboardInterrupt:
        if not created:
            raise CliError("interrupted") from None
        # The agent removes it when the call goes away; this makes sure of it.
        _force_remove(target, created, missing_ok=True)
        raise CliError(f"interrupted: removed {created[:12]}") from None
    except CliError as exc:
        if not created and rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
            raise _NoImage(exc.message) from exc
        if not created and rpc_code(exc) == grpc.StatusCode.UNIMPLEMENTED:
            raise _Unimplemented from exc
        raise RunError(exc.message) from exc
    if result is None:
        raise RunError("the agent ended the run without the container's exit")
    return _exit_code(result)


def _force_remove(target: Target, container_id: str, missing_ok: bool = False) -> None:
    """Remove the container, running or not (`missing_ok`: one already gone is fine)."""
    import grpc

    from dockyard.v1.containers_pb2 import RemoveContainerRequest

    try:
        call(
            target,
            containers_stub,
            "Remove",
            RemoveContainerRequest(container=container_id, force=True),
            what=AGENT,
        )
    except CliError as exc:
        if not missing_ok or rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
            raise


def _exit_code(result: Any) -> int:
    """The container's exit code, its exit error (if any) told on stderr."""
    if result.error:
        click.echo(f"dockyard: {result.error}", err=True)
    return int(result.exit_code)


def run_interactive(options: GlobalOptions, flags: RunFlags, detach_keys: str) -> int:
    """`run -it`: create, attach (the agent holds us until the start), start, relay."""
    from dockyard.cli.commands.interactive import attach_stream, raw_terminal
    from dockyard.v1.containers_pb2 import ContainerRef

    try:
        request = build_request(flags)
        request.stdin_once = flags.interactive  # docker's `run -i`: StdinOnce
        target = options.target()
        ensure_image(target, flags.image, flags.pull)
        record = call(target, containers_stub, "Create", request, what=AGENT)
    except RunError:
        raise
    except CliError as exc:
        raise RunError(exc.message) from exc

    def start() -> None:
        call(target, containers_stub, "Start", ContainerRef(container=record.id), what=AGENT)

    with raw_terminal(flags.tty and flags.interactive):
        outcome = attach_stream(
            target,
            record.id,
            stdin=flags.interactive,
            tty_mode=flags.tty,
            detach_keys=detach_keys,
            on_attached=start,
        )
    if outcome.detached:
        click.echo("read escape sequence", err=True)
        return 0
    # --rm: the agent removes it (auto_remove); the exit code came before the removal.
    return outcome.exit_code if outcome.exit_code is not None else 0


def write_output(stream_name: str, data: bytes) -> None:
    out = sys.stderr.buffer if stream_name == "stderr" else sys.stdout.buffer
    out.write(data)
    out.flush()


def attach(target: Target, container_id: str, *, remove: bool) -> int:
    """Follow the logs until the container exits; return its exit code."""
    from dockyard.v1.containers_pb2 import ContainerRef, LogsRequest

    try:
        for line in stream(
            target,
            containers_stub,
            "Logs",
            LogsRequest(container=container_id, follow=True),
            what=AGENT,
        ):
            write_output(line.stream, line.data)
        result = call(
            target,
            containers_stub,
            "Wait",
            ContainerRef(container=container_id),
            what=AGENT,
            timeout=None,
        )
    except KeyboardInterrupt:
        if remove:
            _force_remove(target, container_id)
            raise CliError(f"interrupted: removed {container_id[:12]}") from None
        raise CliError(f"detached from {container_id[:12]}; it keeps running") from None
    code = _exit_code(result)
    if remove:
        _force_remove(target, container_id)
    return code
