"""The CLI's fast path (cli/fast.py) prints what the full CLI prints, byte for byte,
against real daemons: a TLS controller with hollow agents (a service with history) and
a runc agent reached over TLS, a plaintext controller, and a plaintext runc agent with
containers. Whatever it cannot serve goes to the full CLI."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import AgentUnderTest, have_runc
from tests.conftest import BIN, Cluster

FAST_ONLY_EXIT = 3
CURRENT = ["ps", "--format", "{{.CurrentState}}"]


def full_cli(cluster: Cluster, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`args` on the full CLI (the fixtures never depend on the fast path)."""
    return run(cluster, [*cluster.tls_args(), "-H", cluster.address, *args], "0")


def _start(cluster: Cluster, runc: bool = False) -> Cluster:
    cluster.root.mkdir(parents=True)
    cluster.start_controller()
    cluster.start_hollow_nodes(("n1", "n2"))
    cluster.cli("service", "create", "--name", "web", "--replicas", "2", "busybox", "sleep", "3600")
    cluster.cli("service", "update", "--env-add", "V=2", "web")  # gives web task history
    cluster.wait_for(
        lambda: full_cli(cluster, CURRENT).stdout.count("Running") == 2,
        "web's two tasks running",
    )
    if runc:  # hollow agents serve no Containers API: `ps` on one fails both ways.
        # Started after web is placed: its tasks stay on the hollow nodes (no image pull).
        cluster.start_agent("r1", runtime="runc")
        cluster.wait_for(lambda: cluster.node_state("r1") == "READY", "r1 READY")
    return cluster


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not have_runc():
        pytest.skip("needs root, runc, conmon and /bin/busybox")
    cluster = Cluster(tmp_path_factory.mktemp("fast-tls") / "cluster")
    try:
        yield _start(cluster, runc=True)
    finally:
        cluster.stop()
        cluster.cleanup_networks()


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("fast-plain") / "cluster", insecure=True)
    try:
        yield _start(cluster)
    finally:
        cluster.stop()


def run(
    cluster: Cluster | None,
    args: list[str],
    fast: str,
    extra_env: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    base = cluster.env() if cluster is not None else env or {}
    env = {**base, "DOCKYARD_FAST": fast, **(extra_env or {})}
    return subprocess.run(
        [str(BIN / "dockyard"), *args], capture_output=True, text=True, env=env, timeout=60
    )


# "3 seconds ago", "Up About a minute": they tick between two runs on a loaded machine.
_DURATION = re.compile(
    r"(?:\d+|About an?|Less than a) (?:second|minute|hour|day|week|month|year)s?"
)


def untimed(text: str) -> str:
    """`text` with its humanized durations as `T`, and each run of spaces before one
    column as one space (a duration's width may change the column's)."""
    return "\n".join(re.sub(r" {2,}", "  ", _DURATION.sub("T", line)) for line in text.split("\n"))


def same_both_ways(
    cluster: Cluster | None,
    args: list[str],
    extra_env: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """The fast path serves `args` (DOCKYARD_FAST=only) and prints what the full CLI
    prints just before or just after it: byte for byte, unless a shown duration ticked
    in between, then the same with the durations left out."""
    before = run(cluster, args, "0", extra_env, env)
    fast = run(cluster, args, "only", extra_env, env)
    after = run(cluster, args, "0", extra_env, env)
    assert fast.returncode == 0, fast.stderr
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    if fast.stdout not in (before.stdout, after.stdout):
        assert untimed(fast.stdout) in (untimed(before.stdout), untimed(after.stdout)), (
            f"fast:\n{fast.stdout}\nfull:\n{before.stdout}\nfull again:\n{after.stdout}"
        )
    assert fast.stderr == ""
    return fast.stdout


PS_FORMS = [["ps"], ["ps", "-a"], ["ps", "-q"], ["ps", "--no-trunc", "--all"]]


@pytest.mark.parametrize("form", PS_FORMS, ids=" ".join)
def test_ps_on_a_tls_controller(tls_cluster: Cluster, form: list[str]) -> None:
    out = same_both_ways(tls_cluster, [*tls_cluster.tls_args(), "-H", tls_cluster.address, *form])
    if form == ["ps"]:
        assert out.startswith("ID ") and out.count("web.") == 2


@pytest.mark.parametrize("form", PS_FORMS, ids=" ".join)
def test_ps_on_a_tls_agent(tls_cluster: Cluster, form: list[str]) -> None:
    """The agent's node certificate is not a controller's: its containers are listed,
    its certificate checked against its address (as the full CLI does)."""
    address = tls_cluster.agent_address("r1")
    out = same_both_ways(tls_cluster, [*tls_cluster.tls_args(), "-H", address, *form])
    if form == ["ps"]:
        assert out.startswith("CONTAINER ID ")


@pytest.mark.parametrize("form", PS_FORMS, ids=" ".join)
def test_ps_on_a_plaintext_controller(plain_cluster: Cluster, form: list[str]) -> None:
    out = same_both_ways(plain_cluster, ["-H", plain_cluster.address, *form])
    if form == ["ps"]:
        assert out.count("web.") == 2


@pytest.mark.runc
@pytest.mark.registry
def test_ps_on_a_plaintext_agent_with_containers(agent: AgentUnderTest, busybox_ref: str) -> None:
    agent.ok("pull", busybox_ref)
    agent.ok("run", "-d", "--name", "sleeper", busybox_ref, "sleep", "3600")
    assert agent.cli("run", "--name", "done", busybox_ref, "sh", "-c", "exit 3").returncode == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_CONFIG"] = str(agent.config_dir)
    outputs = {}
    for form in PS_FORMS:
        outputs[" ".join(form)] = same_both_ways(None, ["-H", agent.address, *form], env=env)
    assert "sleeper" in outputs["ps"] and "done" not in outputs["ps"]
    assert "Exited (3)" in outputs["ps -a"]
    assert len(outputs["ps -q"].split()) == 1


LS_FORMS = [
    [group, "ls", *flags] for group in ("node", "service") for flags in ([], ["-q"], ["--no-trunc"])
]


@pytest.mark.parametrize("form", LS_FORMS, ids=" ".join)
def test_node_ls_and_service_ls(
    tls_cluster: Cluster, plain_cluster: Cluster, form: list[str]
) -> None:
    out = same_both_ways(tls_cluster, [*tls_cluster.tls_args(), "-H", tls_cluster.address, *form])
    if form == ["node", "ls"]:
        assert out.startswith("ID ") and " n1 " in out and " r1 " in out
    if form == ["service", "ls"]:
        assert out.startswith("ID ") and " web " in out and " 2/2 " in out
    same_both_ways(plain_cluster, ["-H", plain_cluster.address, *form])


def test_ps_through_a_context_and_the_environment(tls_cluster: Cluster) -> None:
    """The target and TLS material come from where the full CLI takes them."""
    tls = tls_cluster.tls_args()
    tls_cluster.cli("context", "create", "fastctx", "--host", tls_cluster.address, *tls[:6])
    same_both_ways(tls_cluster, ["--context", "fastctx", "ps"])
    same_both_ways(tls_cluster, ["ps"], {"DOCKYARD_CONTEXT": "fastctx"})
    env = {
        "DOCKYARD_HOST": tls_cluster.agent_address("r1"),
        "DOCKYARD_TLS_CACERT": tls[1],
        "DOCKYARD_TLS_CERT": tls[3],
        "DOCKYARD_TLS_KEY": tls[5],
    }
    same_both_ways(tls_cluster, ["ps", "-a"], env)


def test_what_the_fast_path_does_not_serve_goes_to_the_full_cli(tls_cluster: Cluster) -> None:
    tls = tls_cluster.tls_args()
    address = tls_cluster.address
    # Forms it leaves to the full CLI: another flag, another command, several targets.
    for args in (
        ["-H", address, "ps", "--filter", "name=web"],
        ["-H", address, "ps", "-aq"],
        ["-H", address, "-o", "json", "ps"],
        ["-H", address, "-H", address, "ps"],
        ["-H", address, "service", "ps", "web"],
    ):
        assert run(tls_cluster, [*tls, *args], "only").returncode == FAST_ONLY_EXIT, args
        full = run(tls_cluster, [*tls, *args], "1")
        assert full.returncode == 0 and full.stdout, (args, full.stderr)
    # An error on the way (no daemon there, no TLS to a TLS daemon): the full CLI's message.
    agent = tls_cluster.agent_address("r1")
    for args in (
        ["-H", "127.0.0.1:9", "ps"],
        ["-H", address, "ps"],
        [*tls, "-H", agent, "node", "ls"],
    ):
        assert run(tls_cluster, args, "only").returncode == FAST_ONLY_EXIT
        both = [run(tls_cluster, args, mode) for mode in ("1", "0")]
        assert both[0].returncode == both[1].returncode == 1
        assert both[0].stderr == both[1].stderr and both[0].stderr.startswith("dockyard: ")
        assert both[0].stdout == both[1].stdout == ""


def test_the_fast_entry_point_loads_neither_click_nor_grpc() -> None:
    import sys

    code = (
        "import sys, dockyard.cli.fast, dockyard.cli.grpc_lite, dockyard.cli.container_table, "
        "dockyard.cli.commands.service_view, dockyard.cli.node_table, dockyard.common.skew, "
        "dockyard.v1.control_pb2, dockyard.v1.containers_pb2; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('grpc', 'click'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_precompiled_requests_are_the_generated_codes() -> None:
    from dockyard.cli import fast
    from dockyard.v1 import control_pb2

    for history in (False, True):
        request = control_pb2.ListTasksRequest(include_history=history)
        assert request.SerializeToString() == fast.LIST_TASKS_REQUEST[history]
    service = control_pb2.DESCRIPTOR.services_by_name["Control"]
    paths = {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert {fast.LIST_TASKS, fast.LIST_NODES} <= paths
    assert fast.LIST_TASKS.endswith("/ListTasks") and fast.LIST_NODES.endswith("/ListNodes")


def test_the_controller_tls_name_is_pkis() -> None:
    from dockyard.cli.fast import CONTROLLER_TLS_NAME
    from dockyard.common.pki import CONTROLLER_TLS_NAME as pki_name

    assert pki_name == CONTROLLER_TLS_NAME


def test_the_console_script_is_the_fast_entry_point() -> None:
    script = (BIN / "dockyard").read_text()
    assert "from dockyard.cli.fast import main" in script
    assert os.access(BIN / "dockyard", os.X_OK)


def test_an_agents_ps_loads_neither_protobuf_nor_hpack_nor_targets() -> None:
    """What `dockyard -H AGENT ps` imports: no protobuf runtime, no hpack, no dataclasses
    (nor the context store), no typing, no ssl for a plaintext agent."""
    import sys

    code = (
        "import sys; from dockyard.cli import fast, grpc_lite, wire, container_table, render; "
        "from dockyard.cli import humanize; "
        "fast.quick_target(fast.parse(['-H', '127.0.0.1:1', 'ps'])); "
        "print(sorted({m.split('.')[0] for m in sys.modules "
        "if m.startswith(('google', 'hpack', 'dataclasses', 'ssl', 'typing', "
        "'dockyard.common.contexts', 'dockyard.cli.targets'))}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_the_wire_schemas_match_the_generated_descriptors() -> None:
    """Every field `cli/wire.py` reads has the number, name, type and label of the .proto's
    (a renumbered or retyped field breaks this test, not `ps`'s output)."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    from dockyard.cli import wire
    from dockyard.v1 import containers_pb2

    kinds = {
        wire.STRING: FD.TYPE_STRING,
        wire.INT32: FD.TYPE_INT32,
        wire.INT64: FD.TYPE_INT64,
        wire.BOOL: FD.TYPE_BOOL,
        wire.MESSAGE: FD.TYPE_MESSAGE,
    }
    pool = containers_pb2.DESCRIPTOR.pool
    seen: set[str] = set()

    def check(schema: wire.Schema) -> None:
        seen.add(schema.full_name)
        descriptor = pool.FindMessageTypeByName(schema.full_name)
        for number, field in schema.fields.items():
            proto = descriptor.fields_by_number[number]
            assert proto.name == field.name, (schema.full_name, number)
            assert proto.type == kinds[field.kind], (schema.full_name, field.name)
            repeated = bool(proto.is_repeated)
            assert repeated == field.repeated, (schema.full_name, field.name)
            if field.kind == wire.MESSAGE:
                assert field.schema is not None
                assert proto.message_type.full_name == field.schema.full_name
                check(field.schema)

    check(wire.LIST_CONTAINERS_RESPONSE)
    assert "dockyard.v1.PortMapping" in seen and "google.protobuf.Timestamp" in seen


def _sample_containers() -> bytes:
    from dockyard.v1 import containers_pb2

    response = containers_pb2.ListContainersResponse()
    first = response.containers.add(id="a" * 64, name="web", image="busybox:latest")
    first.image_digest = "sha256:" + "b" * 64  # a field `ps` skips
    first.created_at.seconds, first.created_at.nanos = 1_700_000_000, 5
    first.state.status, first.state.pid, first.state.restart_count = "running", 42, 3
    first.state.started_at.seconds = 1_700_000_100
    first.config.entrypoint.extend(["/bin/sh", "-c"])
    first.config.command.extend(["sleep 1", "é"])
    first.config.env.append("A=B")
    first.network.ip_address = "10.0.0.2"
    first.network.ports.add(host_ip="127.0.0.1", host_port=8080, container_port=80)
    first.network.ports.add(host_port=53, container_port=53, protocol="udp")
    second = response.containers.add(id="c" * 64, name="done", image="x")
    second.state.status, second.state.exit_code, second.state.has_exit_code = "exited", -1, True
    second.state.finished_at.seconds = 1_700_000_200
    second.created_at.seconds = 1_600_000_000
    response.containers.add(id="d" * 64)  # all defaults
    return response.SerializeToString()


def test_the_wire_reader_gives_what_protobuf_gives() -> None:
    """`ps`'s table and IDs from the wire reader equal those from the generated code."""
    from dockyard.cli import wire
    from dockyard.cli.container_table import container_table, newest_first
    from dockyard.v1 import containers_pb2

    data = _sample_containers()
    generated = containers_pb2.ListContainersResponse.FromString(data).containers
    read = wire.decode(data, wire.LIST_CONTAINERS_RESPONSE).containers  # type: ignore[attr-defined]
    for no_trunc in (False, True):
        theirs = container_table(newest_first(generated), no_trunc)
        ours = container_table(newest_first(read), no_trunc)
        assert (theirs[0], theirs[1], theirs[3]) == (ours[0], ours[1], ours[3])
    assert read[1].state.exit_code == -1 and read[0].network.ports[1].protocol == "udp"


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05abc", b"\x0a", b"\x0b", b"\x08\x01", b"\x0a\x04\x0a\x02\xff\xfe", b"\x80" * 11],
    ids=["truncated", "no-length", "group", "wrong-wire-type", "bad-utf8", "long-varint"],
)
def test_the_wire_reader_refuses_what_it_does_not_expect(data: bytes) -> None:
    from dockyard.cli import wire

    with pytest.raises(wire.WireError):
        wire.decode(data, wire.LIST_CONTAINERS_RESPONSE)


def test_the_precompiled_container_request_is_the_generated_codes() -> None:
    from dockyard.cli import fast
    from dockyard.v1 import containers_pb2

    for everything in (False, True):
        request = containers_pb2.ListContainersRequest(all=everything)
        assert request.SerializeToString() == fast.LIST_CONTAINERS_REQUEST[everything]
    service = containers_pb2.DESCRIPTOR.services_by_name["Containers"]
    assert f"/{service.full_name}/List" == fast.LIST_CONTAINERS
    assert "List" in {method.name for method in service.methods}


_HEADERS = [
    (":method", "POST"),
    (":scheme", "https"),
    (":path", "/dockyard.v1.Containers/List"),
    (":authority", "dockyard-controller"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    ("grpc-timeout", "14999m"),
    ("user-agent", "dockyard-cli-fast"),
]


def test_hpack_lite_encodes_what_hpack_decodes() -> None:
    import hpack

    from dockyard.cli import hpack_lite

    assert hpack.Decoder().decode(hpack_lite.encode(_HEADERS)) == _HEADERS


def test_hpack_lite_decodes_what_hpack_encodes() -> None:
    """Blocks from `hpack`'s encoder (Huffman, the dynamic table, its size updates,
    never-indexed fields), several on one connection, read as `hpack` reads them."""
    import hpack

    from dockyard.cli import hpack_lite

    blocks = [
        [(":status", "200"), ("content-type", "application/grpc"), ("grpc-accept-encoding", "x")],
        [("grpc-status", "0"), ("grpc-message", "caf%C3%A9 ~ é"), ("x-custom", "v" * 300)],
        [(":status", "200"), ("grpc-status", "12"), ("grpc-message", "Method not found!")],
        [("grpc-status", "0"), ("x-custom", "v" * 300), ("grpc-message", "caf%C3%A9 ~ é")],
    ]
    for huffman in (True, False):
        encoder, theirs, ours = hpack.Encoder(), hpack.Decoder(), hpack_lite.Decoder()
        for i, headers in enumerate(blocks):
            if i == 2:
                encoder.header_table_size = 256  # a dynamic table size update, then evictions
            sensitive = [hpack.NeverIndexedHeaderTuple(*headers[-1])]
            encoded = encoder.encode([*headers[:-1], *sensitive], huffman=huffman)
            assert ours.decode(encoded) == [(k, v) for k, v in theirs.decode(encoded)]


@pytest.mark.parametrize(
    "block",
    [b"\xbf", b"\x40\x81", b"\x00\x81\xfe\x00", b"\x3f\xe2\x1f", b"\x82\xff"],
    ids=["no-entry", "truncated", "bad-huffman-padding", "table-too-big", "bad-integer"],
)
def test_hpack_lite_refuses_malformed_blocks(block: bytes) -> None:
    from dockyard.cli import hpack_lite

    with pytest.raises(hpack_lite.HpackError):
        hpack_lite.Decoder().decode(block)


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({}, ["-H", "10.0.0.1", "ps"]),
        ({}, ["-H", "tcp://[::1]:7000", "ps"]),
        ({"DOCKYARD_HOST": "h:1"}, ["ps"]),
        ({"DOCKYARD_HOST": "h:1", "DOCKYARD_CONTEXT": "c"}, ["ps"]),
        ({}, ["-H", "h", "--tlscacert", "a", "--tlscert", "b", "--tlskey", "c", "ps"]),
        ({"DOCKYARD_TLS_CACERT": "a", "DOCKYARD_TLS_CERT": "b", "DOCKYARD_TLS_KEY": "c"}, []),
        ({"DOCKYARD_TLS_CACERT": "a", "DOCKYARD_TLS_CERT": "b"}, ["--tlskey", "c", "-H", "h"]),
        ({"DOCKYARD_TLS_CACERT": "a"}, ["-H", "h", "ps"]),
        ({"DOCKYARD_CERT_PATH": "/p"}, ["-H", "h", "ps"]),
        ({}, ["-c", "other", "-H", "h", "--tlscacert", "a", "--tlscert", "b", "--tlskey", "c"]),
        ({}, ["-c", "other", "-H", "h", "ps"]),
        ({}, ["-H", "a", "-H", "b", "ps"]),
        ({}, ["-H", "not a host:x", "ps"]),
        ({}, ["ps"]),
    ],
)
def test_the_quick_target_is_resolve_targets(
    env: dict[str, str], args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where `quick_target` answers, `resolve_targets` (the full CLI's) answers the same;
    where it does not, the fast path asks `resolve_targets`."""
    from dockyard.cli import fast
    from dockyard.cli.targets import TargetError

    for key in [k for k in os.environ if k.startswith("DOCKYARD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DOCKYARD_CONFIG", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    words = args if args and args[-1] == "ps" else [*args, "ps"]
    invocation = fast.parse(words)
    quick = fast.quick_target(invocation)
    try:
        full = fast.target_of(invocation, quick=False)
    except (fast.NotFast, TargetError):
        assert quick is None
        return
    if quick is not None:
        assert (quick.address, quick.server_name) == (full.address, full.server_name)
        files = None if quick.tls is None else (quick.tls.ca, quick.tls.cert, quick.tls.key)
        assert files == (None if full.tls is None else (full.tls.ca, full.tls.cert, full.tls.key))
