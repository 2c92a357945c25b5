"""`dockyard version` and `dockyard info`: they work against a controller or an agent."""

from __future__ import annotations

from typing import Any

import click

from dockyard.cli.client import CliError, Target, call, is_not_a_controller, is_unimplemented
from dockyard.cli.fanout import run_each
from dockyard.cli.listing import ask_all, finish
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, key_values, table, to_data


def _ask_daemon(
    target: Target, control_method: str, control_request: Any, agent_method: str, agent_request: Any
) -> tuple[str, Any]:
    """Ask as a controller (over TLS: its certificate must be a controller's); if the
    daemon is an agent, ask it as one."""
    from dockyard.v1 import agent_pb2_grpc, control_pb2_grpc

    try:
        return "controller", call(
            target,
            control_pb2_grpc.ControlStub,
            control_method,
            control_request,
            what="daemon",
            controller=True,
        )
    except CliError as exc:
        if not (is_unimplemented(exc) or is_not_a_controller(exc)):
            raise
    return "agent", call(
        target,
        agent_pb2_grpc.AgentStub,
        agent_method,
        agent_request,
        what="daemon",
        controller=False,
    )


@click.command()
@click.option(
    "--client", "client_only", is_flag=True, help="Only the client's version: no daemon is asked."
)
@output_option
@pass_options
def version(options: GlobalOptions, client_only: bool) -> None:
    """Show the client's and each addressed daemon's version (the client's even when
    no daemon answers); against a controller, every controller's and agent's version with
    its skew (docs/upgrades.md)."""
    from dockyard.v1.types_pb2 import GetVersionRequest

    client = client_version()

    def ask(target: Target) -> tuple[Any, list[dict[str, str]]]:
        kind, info = _ask_daemon(
            target, "GetVersion", GetVersionRequest(), "GetVersion", GetVersionRequest()
        )
        return info, _cluster_versions(target, info.version) if kind == "controller" else []

    targets = [] if client_only else options.targets()
    outcomes = run_each(targets, ask, options.target_timeout, options.concurrency)
    servers = [(o.target, *o.value) for o in outcomes if o.value is not None]
    if options.output != "table":
        emit_data(
            {
                "client": client,
                "servers": [
                    {
                        "target": t.label,
                        "address": t.address,
                        **to_data(v),
                        **({"cluster": d} if d else {}),
                    }
                    for t, v, d in servers
                ],
            },
            options.output,
        )
    else:
        click.echo(
            key_values(
                [
                    ("Client", ""),
                    ("  Version", client["version"]),
                    ("  API version", client["api_version"]),
                ]
            )
        )
        for target, info, daemons in servers:
            click.echo(
                key_values(
                    [
                        (f"Server {_server_name(target)}", info.component),
                        ("  Version", info.version),
                        ("  API version", info.api_version),
                        ("  Python", info.python_version),
                        ("  gRPC", info.grpc_version),
                        ("  OS/Arch", f"{info.os}/{info.architecture}"),
                    ]
                )
            )
            rows: list[tuple[object, ...]] = [
                (d["kind"], d["name"], d["version"], d["skew"] or "-") for d in daemons
            ]
            if rows:
                click.echo(_section("Cluster daemons", ("KIND", "NAME", "VERSION", "SKEW"), rows))
    finish(outcomes)


def client_version() -> dict[str, str]:
    from dockyard.common.version import API_VERSION, package_version

    return {"component": "dockyard", "version": package_version(), "api_version": API_VERSION}


def _server_name(target: Target) -> str:
    if target.label == target.address:
        return target.address
    return f"{target.label} ({target.address})"


def _cluster_versions(target: Target, controller_version: str) -> list[dict[str, str]]:
    """Every controller's and agent's version, with its skew (common/skew.py) against the
    policy of docs/upgrades.md."""
    from dockyard.common.skew import agent_skew, controller_skew
    from dockyard.v1 import control_pb2_grpc
    from dockyard.v1.control_pb2 import GetInfoRequest, ListNodesRequest

    info = call(target, control_pb2_grpc.ControlStub, "GetInfo", GetInfoRequest(members=True))
    nodes = call(target, control_pb2_grpc.ControlStub, "ListNodes", ListNodesRequest()).nodes
    among = controller_skew([c.version for c in info.controllers])
    daemons = [
        {"kind": "controller", "name": c.controller_id[:12], "version": c.version, "skew": among}
        for c in info.controllers
    ]
    daemons += [
        {
            "kind": "agent",
            "name": n.spec.name,
            "version": n.description.agent_version,
            "skew": agent_skew(controller_version, n.description.agent_version),
        }
        for n in sorted(nodes, key=lambda n: n.spec.name)
    ]
    return daemons


@click.command()
@output_option
@pass_options
def info(options: GlobalOptions) -> None:
    """Summarise the cluster (controller) or the node (agent)."""
    from dockyard.v1.agent_pb2 import GetAgentInfoRequest
    from dockyard.v1.control_pb2 import GetInfoRequest

    outcomes = ask_all(
        options,
        lambda target: _ask_daemon(
            target, "GetInfo", GetInfoRequest(members=True), "GetAgentInfo", GetAgentInfoRequest()
        ),
    )
    results = [(o.target, *o.value) for o in outcomes if o.ok and o.value is not None]
    if options.output != "table":
        data = [
            {
                **({"target": t.label} if options.many else {}),
                "address": t.address,
                "kind": kind,
                **to_data(v),
            }
            for t, kind, v in results
        ]
        emit_data(data[0] if len(data) == 1 and not options.many else data, options.output)
        finish(outcomes)
        return
    for index, (target, kind, value) in enumerate(results):
        if index:
            click.echo()
        if options.many:
            click.echo(f"Target: {target.label}")
        if kind != "controller":
            click.echo(_agent_text(target, value))
            continue
        click.echo(_cluster_text(target, value))
        for section in (_controllers_text(value), _etcd_text(value)):
            if section:
                click.echo()
                click.echo(section)
    finish(outcomes)


def _cluster_text(target: Target, info: Any) -> str:
    unread = "unknown (see State)" if info.state_error else ""
    return key_values(
        [
            ("Controller", f"{target.address} ({info.controller_id[:12]})"),
            ("Cluster ID", info.cluster_id),
            ("Leader", "this controller" if info.is_leader else (info.leader_address or "none")),
            *([("State", info.state_error)] if info.state_error else []),
            (
                "Nodes",
                unread
                or f"{info.nodes_total} ({info.nodes_ready} ready, {info.nodes_down} down, "
                f"{info.nodes_unknown} unknown)",
            ),
            ("Agent sessions", info.agent_sessions),
            (
                "Tasks",
                unread
                or f"{info.tasks_total} ({info.tasks_running} running, "
                f"{info.tasks_pending} pending)",
            ),
            (
                "Heartbeat",
                f"every {info.heartbeat_period_seconds:g} s, down after "
                f"{info.node_grace_seconds:g} s",
            ),
            (
                "etcd",
                f"{', '.join(info.etcd_endpoints)} (v{info.etcd_version}"
                f"{', embedded' if info.etcd_embedded else ''})",
            ),
            ("Version", info.version.version),
            ("Uptime", f"{info.uptime_seconds:.0f} s"),
        ]
    )


def _controllers_text(info: Any) -> str:
    """Every registered controller (the answering one marked *), as this one sees them."""
    from dockyard.common.timestamps import human_age, is_set

    rows: list[tuple[object, ...]] = [
        (
            c.controller_id[:12] + (" *" if c.is_self else ""),
            c.api_address,
            c.http_address or "-",
            "leader" if c.is_leader else "follower",
            human_age(c.leader_since) if is_set(c.leader_since) else "-",
            "yes" if c.reachable else "no",
            human_age(c.started_at),
            c.version,
            c.error,
        )
        for c in info.controllers
    ]
    headers = (
        "ID",
        "API ADDRESS",
        "HTTP ADDRESS",
        "ROLE",
        "LEADING SINCE",
        "REACHABLE",
        "STARTED",
        "VERSION",
        "ERROR",
    )
    return _section("Controllers", headers, rows)


def _etcd_text(info: Any) -> str:
    """Every etcd member with its health (raft term and index where it answered)."""
    rows: list[tuple[object, ...]] = [
        (
            m.name or "-",
            m.id or "-",
            ", ".join(m.client_urls) or "-",
            "yes" if m.is_leader else "no",
            "yes" if m.reachable else "no",
            _size(m.db_size) if m.reachable else "-",
            m.raft_term if m.reachable else "-",
            m.raft_index if m.reachable else "-",
            m.version or "-",
            m.error or "; ".join(m.errors),
        )
        for m in info.etcd_members
    ]
    headers = (
        "NAME",
        "ID",
        "CLIENT URL",
        "LEADER",
        "REACHABLE",
        "DB SIZE",
        "RAFT TERM",
        "RAFT INDEX",
        "VERSION",
        "ERROR",
    )
    return _section("etcd members", headers, rows)


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _section(title: str, headers: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """A titled, indented table; its last column (ERROR) only when some row has one."""
    if not rows:
        return ""
    if not any(row[-1] for row in rows):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    return f"{title}:\n" + "\n".join("  " + line for line in table(headers, rows).splitlines())


def _agent_text(target: Target, info: Any) -> str:
    from dockyard.common.timestamps import human_age

    description = info.description
    return key_values(
        [
            ("Agent", f"{target.address}"),
            ("Node", f"{info.name} ({info.node_id})"),
            (
                "Session",
                f"{info.session_state}"
                + (f" to {info.connected_controller}" if info.connected_controller else ""),
            ),
            ("Last heartbeat ack", human_age(info.last_heartbeat_ack)),
            ("Runtime", f"{description.runtime} {description.runtime_version}".strip()),
            ("CPUs", f"{description.resources.nano_cpus / 1e9:g}"),
            ("Memory", _gib(description.resources.memory_bytes)),
            ("Kernel", description.kernel_version),
            ("State dir", info.state_dir),
            ("Version", info.version.version),
        ]
    )


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"
