"""`dockyard`'s entry point: the common reads served without click or grpcio.

`dockyard ps` (and `-a`, `-q`, `--no-trunc`), `dockyard node ls` and `dockyard
service ls` (`-q`, `--no-trunc`) for one target, named by -H, a context or the
environment exactly as the full CLI names it, are asked over `grpc_lite` and printed
with the full CLI's own table code. Everything else, and every answer this path does
not expect (an error status, a warning, a connection or TLS failure, more than one
target), goes to the full CLI (`cli/main.py`), which then prints what it always
prints: the fast path writes nothing until it has the whole answer.

`DOCKYARD_FAST=0` turns the fast path off; `DOCKYARD_FAST=only` (for tests) never
falls back: a command the fast path cannot serve exits 3 with the reason on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from dockyard.common.addresses import CONTROLLER_PORT, AddressError, normalize

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:  # targets loads dataclasses and the contexts: only when needed
    from typing import Any

    from dockyard.cli.targets import Target

CONTROLLER_TLS_NAME = "dockyard-controller"
"""`pki.CONTROLLER_TLS_NAME` (a test keeps them equal; pki loads cryptography)."""
NOT_FAST_EXIT = 3
# `ps` asks ListTasks before it knows whether a controller or an agent answers: its
# request, precompiled, spares an agent's `ps` loading the Control API's stubs (a test
# keeps these equal to the generated code's).
LIST_TASKS = "/dockyard.v1.Control/ListTasks"
LIST_NODES = "/dockyard.v1.Control/ListNodes"
LIST_TASKS_REQUEST = {False: b"", True: b"\x18\x01"}
"""`ListTasksRequest(include_history=...)`, serialized."""
LIST_CONTAINERS = "/dockyard.v1.Containers/List"
LIST_CONTAINERS_REQUEST = {False: b"", True: b"\x08\x01"}
"""`ListContainersRequest(all=...)`, serialized."""
DEFAULT_TIMEOUT = 15.0
"""`client.DEFAULT_TIMEOUT`: each call's deadline."""

# Global options the fast path understands: option -> its name in `Invocation`.
_GLOBAL = {
    "-H": "hosts",
    "--host": "hosts",
    "-c": "context",
    "--context": "context",
    "--tlscacert": "tlscacert",
    "--tlscert": "tlscert",
    "--tlskey": "tlskey",
}
# Each fast command and the flags it accepts (flag -> canonical name).
_COMMANDS: dict[tuple[str, ...], dict[str, str]] = {
    ("ps",): {
        "-a": "all",
        "--all": "all",
        "-q": "quiet",
        "--quiet": "quiet",
        "--no-trunc": "no_trunc",
    },
    ("node", "ls"): {"-q": "quiet", "--quiet": "quiet", "--no-trunc": "no_trunc"},
    ("service", "ls"): {"-q": "quiet", "--quiet": "quiet", "--no-trunc": "no_trunc"},
}


class NotFast(Exception):
    """This invocation is for the full CLI."""


class Invocation:
    """A command line the fast path can serve."""

    def __init__(
        self,
        command: tuple[str, ...],
        flags: frozenset[str],
        hosts: tuple[str, ...] = (),
        context: str | None = None,
        tlscacert: str | None = None,
        tlscert: str | None = None,
        tlskey: str | None = None,
    ) -> None:
        self.command, self.flags, self.hosts, self.context = command, flags, hosts, context
        self.tlscacert, self.tlscert, self.tlskey = tlscacert, tlscert, tlskey


class QuickTLS:
    """`targets.TLSFiles`'s three paths, without loading `targets`."""

    __slots__ = ("ca", "cert", "key")

    def __init__(self, ca: str, cert: str, key: str) -> None:
        self.ca, self.cert, self.key = ca, cert, key


class QuickTarget:
    """The one `targets.Target` of `-H ADDRESS` (or DOCKYARD_HOST) when no context is
    consulted: the address, the TLS material, no server name."""

    __slots__ = ("address", "server_name", "tls")

    def __init__(self, address: str, tls: QuickTLS | None) -> None:
        self.address, self.tls, self.server_name = address, tls, ""


def quick_target(invocation: Invocation) -> QuickTarget | None:
    """`resolve_targets`' answer where it reads no context (its first return: an address
    from -H or DOCKYARD_HOST, and TLS material from the flags or the environment or no
    context named), else None: then `target_of` asks `resolve_targets` itself."""
    env = os.environ
    if env.get("DOCKYARD_CERT_PATH"):
        return None
    context = invocation.context or env.get("DOCKYARD_CONTEXT") or None
    hosts = invocation.hosts
    if not hosts:
        env_host = env.get("DOCKYARD_HOST")
        if not env_host or context:
            return None
        hosts = (env_host,)
    files = (
        invocation.tlscacert or env.get("DOCKYARD_TLS_CACERT") or None,
        invocation.tlscert or env.get("DOCKYARD_TLS_CERT") or None,
        invocation.tlskey or env.get("DOCKYARD_TLS_KEY") or None,
    )
    if len(hosts) != 1 or (any(files) and not all(files)) or (context and not any(files)):
        return None
    try:
        address = normalize(hosts[0], CONTROLLER_PORT)
    except AddressError:
        return None
    ca, cert, key = files
    tls = QuickTLS(ca, cert, key) if ca and cert and key else None
    return QuickTarget(address, tls)


def parse(argv: Sequence[str]) -> Invocation:
    """The fast form of `argv`, or NotFast: global options (each once, `-H` repeatable)
    with their value in the next word or after `=`, then a fast command and its flags."""
    values: dict[str, Any] = {"hosts": ()}
    words = list(argv)
    while words and words[0].startswith("-"):
        option, equals, value = words.pop(0).partition("=")
        name = _GLOBAL.get(option)
        if name is None or (equals and option.startswith("-") and len(option) == 2):
            raise NotFast(option)
        if not equals:
            if not words:
                raise NotFast(option)
            value = words.pop(0)
        if name == "hosts":
            values["hosts"] = (*values["hosts"], value)
        elif name in values:
            raise NotFast(f"{option} twice")
        else:
            values[name] = value
    for command, known in _COMMANDS.items():
        if tuple(words[: len(command)]) == command:
            flags = words[len(command) :]
            if not all(flag in known for flag in flags):
                raise NotFast(f"flags {flags}")
            return Invocation(command, frozenset(known[f] for f in flags), **values)
    raise NotFast(f"command {words[:2]}")


def target_of(invocation: Invocation, quick: bool = True) -> Target | QuickTarget:
    """The one target the full CLI would address (NotFast if several, or on an error);
    `quick`: `quick_target`'s when it has one."""
    found = quick_target(invocation) if quick else None
    if found is not None:
        return found
    from dockyard.cli.targets import TargetError, TLSFiles, resolve_targets

    env = os.environ
    try:
        tls = TLSFiles.from_values(
            invocation.tlscacert or env.get("DOCKYARD_TLS_CACERT") or None,
            invocation.tlscert or env.get("DOCKYARD_TLS_CERT") or None,
            invocation.tlskey or env.get("DOCKYARD_TLS_KEY") or None,
            "--tlscacert/--tlscert/--tlskey",
        )
        context = invocation.context or env.get("DOCKYARD_CONTEXT") or None
        targets = resolve_targets(invocation.hosts, context, tls)
    except TargetError as exc:
        raise NotFast(exc.message) from exc
    if len(targets) != 1:
        raise NotFast("several targets")
    return targets[0]


def ps(target: Target | QuickTarget, flags: frozenset[str]) -> str:
    """`dockyard ps`: the tasks of a controller, else the containers of an agent."""
    from dockyard.cli import grpc_lite

    calls = [(LIST_TASKS, LIST_TASKS_REQUEST["all" in flags]), (LIST_NODES, b"")]
    containers = (LIST_CONTAINERS, LIST_CONTAINERS_REQUEST["all" in flags])
    if target.tls is None:
        # Plaintext: a controller or an agent, told apart by which calls it implements;
        # all three asked at once spare an agent's `ps` a second round trip.
        with _connect(target, "") as connection:
            tasks, nodes, listed = connection.calls([*calls, containers])
        if tasks.status == grpc_lite.UNIMPLEMENTED:
            return _containers(listed, flags)
        return _tasks(tasks, nodes, flags)
    import ssl  # only for a TLS target

    try:
        connection = _connect(target, target.server_name or CONTROLLER_TLS_NAME)
    except ssl.SSLCertVerificationError as exc:
        # Not a controller's certificate (the full CLI's `is_not_a_controller`): an agent.
        if exc.verify_code != _HOSTNAME_MISMATCH:
            raise
        with _connect(target, target.server_name) as agent:
            [listed] = agent.calls([containers])
        return _containers(listed, flags)
    with connection:
        tasks, nodes = connection.calls(calls)
    return _tasks(tasks, nodes, flags)


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def node_ls(target: Target | QuickTarget, flags: frozenset[str]) -> str:
    """`dockyard node ls`: a controller's nodes by name, with its version for the skew."""
    from dockyard.cli.node_table import NODE_HEADERS, node_row
    from dockyard.v1 import control_pb2, types_pb2

    name = target.server_name or (CONTROLLER_TLS_NAME if target.tls is not None else "")
    with _connect(target, name) as connection:
        nodes_reply, version_reply = connection.calls(
            [
                (_path(control_pb2, "Control", "ListNodes"), b""),
                (_path(control_pb2, "Control", "GetVersion"), b""),
            ]
        )
    response = control_pb2.ListNodesResponse.FromString(_checked(nodes_reply))
    version = str(types_pb2.VersionInfo.FromString(_checked(version_reply)).version)
    nodes = sorted(response.nodes, key=lambda n: n.spec.name)
    rows = [node_row(n, version, "no_trunc" in flags) for n in nodes]
    return _listing(NODE_HEADERS, rows, [n.id for n in nodes], flags)


def service_ls(target: Target | QuickTarget, flags: frozenset[str]) -> str:
    """`dockyard service ls`: a controller's services by name, with their replica counts."""
    from dockyard.cli.commands.service_view import SERVICE_HEADERS, service_row
    from dockyard.v1 import control_pb2

    name = target.server_name or (CONTROLLER_TLS_NAME if target.tls is not None else "")
    with _connect(target, name) as connection:
        [reply] = connection.calls([(_path(control_pb2, "Control", "ListServices"), b"")])
    summaries = control_pb2.ListServicesResponse.FromString(_checked(reply)).services
    kept = sorted(summaries, key=lambda s: s.service.spec.name)
    rows = [service_row(s, "no_trunc" in flags) for s in kept]
    return _listing(SERVICE_HEADERS, rows, [s.service.id for s in kept], flags)


def _connect(target: Target | QuickTarget, server_name: str) -> Any:
    from dockyard.cli import grpc_lite

    name = server_name or grpc_lite.host_of(target.address)
    return grpc_lite.Connection(target.address, target.tls, name, DEFAULT_TIMEOUT)


def _path(module: Any, service: str, method: str) -> str:
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/{method}"


def _checked(reply: Any) -> bytes:
    """The answer's message; NotFast for anything the full CLI would say more about."""
    from dockyard.common.metadata import WARNING_KEY

    if reply.status != 0:
        raise NotFast(f"status {reply.status}: {reply.message}")
    if any(key == WARNING_KEY for key, _ in reply.metadata):
        raise NotFast("a warning to print")
    return bytes(reply.payload)


def _tasks(tasks_reply: Any, nodes_reply: Any, flags: frozenset[str]) -> str:
    from dockyard.cli.commands.service_view import TASK_HEADERS, task_rows
    from dockyard.v1 import control_pb2

    tasks = list(control_pb2.ListTasksResponse.FromString(_checked(tasks_reply)).tasks)
    nodes = control_pb2.ListNodesResponse.FromString(_checked(nodes_reply)).nodes
    names = {n.id: n.spec.name for n in nodes}
    rows = task_rows(tasks, names, no_trunc="no_trunc" in flags)
    return _listing(TASK_HEADERS, rows, [t.id for t in tasks], flags)


def _containers(reply: Any, flags: frozenset[str]) -> str:
    from dockyard.cli import wire
    from dockyard.cli.container_table import container_table, newest_first

    response: Any = wire.decode(_checked(reply), wire.LIST_CONTAINERS_RESPONSE)
    headers, rows, _, ids, _ = container_table(
        newest_first(response.containers), "no_trunc" in flags
    )
    return _listing(headers, rows, ids, flags)


def _listing(
    headers: list[str], rows: list[list[str]], ids: list[str], flags: frozenset[str]
) -> str:
    """What `listing.show_listing` prints for one target: the IDs with -q, else the table."""
    if "quiet" in flags:
        return "".join(f"{i}\n" for i in ids)
    from dockyard.cli.render import table

    return table(headers, rows) + "\n"


RUNNERS: dict[tuple[str, ...], Callable[[Target | QuickTarget, frozenset[str]], str]] = {
    ("ps",): ps,
    ("node", "ls"): node_ls,
    ("service", "ls"): service_ls,
}


def serve(argv: Sequence[str]) -> str:
    """The output of `argv` on the fast path (NotFast, or any error: it cannot serve it)."""
    invocation = parse(argv)
    return RUNNERS[invocation.command](target_of(invocation), invocation.flags)


def main() -> None:
    """`dockyard`: the fast path when it can serve the command, else the full CLI."""
    mode = os.environ.get("DOCKYARD_FAST", "1")
    if mode != "0":
        try:
            output = serve(sys.argv[1:])
        except Exception as exc:  # any doubt: the full CLI decides and says what went wrong
            if mode == "only":  # tests: see that the fast path served, or why not
                sys.stderr.write(f"dockyard: not on the fast path: {type(exc).__name__}: {exc}\n")
                sys.exit(NOT_FAST_EXIT)
        else:
            sys.stdout.write(output)
            sys.stdout.flush()
            return
    from dockyard.cli.main import main as full

    full()
