"""Fuzzing the Control API: hypothesis builds request messages from their
descriptors (huge, unicode and control-character strings, extreme numbers,
unknown enum values, long repeated fields and maps) plus "almost valid"
service and node specs, and sends them to one real TLS controller.

Every answer must be a deliberate status (never UNKNOWN or INTERNAL, which mean
an unhandled error), INVALID_ARGUMENT must name the field, the controller must
stay up, and a rejected mutating request must leave etcd as it was.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import strategies as st

from dockyard.controller.server import MAX_MESSAGE_BYTES
from dockyard.v1 import control_pb2
from dockyard.v1.control_pb2 import (
    CreateServiceRequest,
    GetClusterRequest,
    GetInfoRequest,
    GetNodeRequest,
    GetServiceRequest,
    UpdateNodeRequest,
    UpdateServiceRequest,
)
from dockyard.v1.types_pb2 import Node, NodeSpec, NodeStatus
from dockyard.v1.workloads_pb2 import PortConfig, ServiceSpec
from tests.conftest import Cluster
from tests.security.fuzzlib import (
    MessageStrategies,
    check_answer,
    edge_integers,
    etcd_snapshot,
    nasty_strings,
    run_examples,
    settle,
)

PREFIX = "/dockyard/"
# Written by the controller's own loops, not by requests: task records (the
# orchestrators) and the leader lease.
BACKGROUND_KEYS = ("/dockyard/tasks/", "/dockyard/leader/", "/dockyard/controllers/")
SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"]
METHODS = [m.name for m in SERVICE.methods]
MUTATING = {
    "UpdateNode",
    "RemoveNode",
    "CreateService",
    "UpdateService",
    "RemoveService",
    "CreateJoinToken",
    "RotateJoinTokens",
    "UpdateCluster",
    "CreateSecret",
    "RemoveSecret",
}
BASE_SERVICE = "fuzz-base"
FAKE_NODE_ID = "f0zz0000000000000000000000000001"
FAKE_NODE = "fuzz-node"

# -- strategies ------------------------------------------------------------------

# Values that get a request past the first checks, so the fuzzer reaches the later ones.
FIELD_HINTS: dict[str, list[str]] = {
    "service": [BASE_SERVICE],
    "services": [BASE_SERVICE],
    "names": [BASE_SERVICE, FAKE_NODE],
    "node": [FAKE_NODE, FAKE_NODE_ID, FAKE_NODE_ID[:6]],
    "nodes": [FAKE_NODE, FAKE_NODE_ID],
    "name": ["fz-a", "fz-b", BASE_SERVICE, FAKE_NODE],
    "role": ["agent", "controller"],
    "mode": ["replicated", "global", "job"],
    "image": ["alpine", "alpine:3.19", "docker.io/library/busybox:latest"],
    "command": ["sh", "-c"],
    "env": ["A=1", "B="],
    "protocol": ["tcp", "udp"],
    "network": ["none", "host"],
    "test": ["CMD", "CMD-SHELL", "NONE", "true"],
    "constraints": ["node.labels.zone==a", "node.name!=x", "node.platform.os==linux"],
    "spread": ["node.labels.zone"],
    "labels": ["zone", "zone=a"],
    "secret": ["fz-a", "fz-b"],
    "secret_name": ["fz-a", "fz-b"],
    "target": ["a", "../x"],
}
MESSAGES = MessageStrategies(FIELD_HINTS)

names = st.one_of(
    st.from_regex(r"\Afz-[a-z0-9]{1,8}\Z"),
    st.sampled_from(["", "a\n", "fz-b\n", "-a", "a b", "a" * 64, "é", BASE_SERVICE]),
)
images = st.one_of(
    st.sampled_from(
        [
            "alpine",
            "alpine:3.19",
            "docker.io/library/busybox:latest",
            "localhost:5000/a/b@sha256:" + "a" * 64,
        ]
    ),
    st.sampled_from(
        [
            "ALPINE",
            "alpine:",
            ":tag",
            "a b",
            "alpine@sha256:xyz",
            "a" * 600,
            "a/" * 300 + "b",
            "alpine:" + "t" * 200,
            "alpine\n",
        ]
    ),
)
small_counts = st.one_of(st.integers(0, 2), st.sampled_from([-1, 100_001, 2**62, -(2**63)]))
label_maps = st.one_of(
    st.dictionaries(st.from_regex(r"\A[a-z]{1,5}\Z"), st.text(max_size=5), max_size=3),
    st.dictionaries(nasty_strings, nasty_strings, max_size=5),
    st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(60, 70)),
)


def _perturb_spec(spec: ServiceSpec, draw: Callable[..., Any]) -> None:
    """Make one part of a valid spec wrong (or still right, at the edge of a bound)."""
    container = spec.task.container
    part = draw(st.integers(0, 12))
    if part == 0:
        spec.name = draw(nasty_strings)
    elif part == 1:
        spec.labels.update(draw(label_maps))
    elif part == 2:
        container.command.extend(draw(st.lists(nasty_strings, max_size=50)))
    elif part == 3:
        container.command.extend(["x"] * draw(st.sampled_from([1000, 1001, 5000])))
    elif part == 4:
        container.env.extend(draw(st.lists(st.one_of(nasty_strings, st.just("A=1")), max_size=50)))
    elif part == 5:
        container.labels.update(draw(label_maps))
    elif part == 6:
        spec.task.placement.constraints.extend(
            draw(
                st.lists(
                    st.one_of(nasty_strings, st.sampled_from(FIELD_HINTS["constraints"])),
                    max_size=70,
                )
            )
        )
    elif part == 7:
        spec.task.ports.extend(
            draw(
                st.lists(
                    st.builds(
                        PortConfig,
                        target_port=edge_integers(-(2**31), 2**31 - 1),
                        published_port=edge_integers(-(2**31), 2**31 - 1),
                        protocol=st.sampled_from(["", "tcp", "udp", "sctp", "TCP"]),
                    ),
                    max_size=5,
                )
            )
        )
    elif part == 8:
        for text in draw(st.lists(nasty_strings, max_size=5)):
            getattr(container, draw(st.sampled_from(["cap_add", "cap_drop", "entrypoint"]))).append(
                text
            )
    elif part == 9:
        setattr(
            container,
            draw(st.sampled_from(["workdir", "user", "hostname", "network"])),
            draw(nasty_strings),
        )
    elif part == 10:
        container.healthcheck.test.extend(
            draw(
                st.lists(st.one_of(st.sampled_from(FIELD_HINTS["test"]), nasty_strings), max_size=5)
            )
        )
        container.healthcheck.interval_seconds = draw(st.floats())
    elif part == 11:
        spec.task.placement.preferences.add(spread=draw(nasty_strings))
    else:
        spec.update.parallelism = draw(edge_integers(-(2**31), 2**31 - 1))
        spec.update.max_failure_ratio = draw(st.floats())


@st.composite
def almost_valid_specs(draw: Callable[..., Any]) -> ServiceSpec:
    spec = ServiceSpec(name=draw(names))
    spec.task.container.image = draw(images)
    mode = draw(st.sampled_from(["replicated", "global", "job"]))
    if mode == "replicated":
        spec.replicated.replicas = draw(small_counts)
    elif mode == "global":
        getattr(spec, "global").SetInParent()
    else:
        spec.job.completions = draw(small_counts)
        spec.job.parallelism = draw(small_counts)
    for _ in range(draw(st.integers(0, 2))):
        _perturb_spec(spec, draw)
    return spec


node_specs = st.builds(
    NodeSpec,
    name=st.one_of(st.just(FAKE_NODE), names),
    labels=label_maps,
    availability=st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-(2**31), 2**31 - 1)),
)


def request_strategy(method: str) -> st.SearchStrategy[Message]:
    generic = MESSAGES.message_of(SERVICE.methods_by_name[method].input_type)
    if method == "CreateService":
        return st.one_of(generic, st.builds(CreateServiceRequest, spec=almost_valid_specs()))
    if method == "UpdateService":
        return st.one_of(
            generic,
            st.builds(
                UpdateServiceRequest,
                service=st.just(BASE_SERVICE),
                spec=almost_valid_specs(),
                force=st.booleans(),
                rollback=st.booleans(),
            ),
        )
    if method == "UpdateNode":
        return st.one_of(
            generic, st.builds(UpdateNodeRequest, node=st.just(FAKE_NODE), spec=node_specs)
        )
    return generic


# -- the controller under test ---------------------------------------------------


@dataclass
class Fuzzed:
    cluster: Cluster
    stub: Any
    etcd: str
    results: dict[str, set[str]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, int]:
        """Every key under the prefix with its mod revision (background keys left out)."""
        return etcd_snapshot(self.etcd, PREFIX, BACKGROUND_KEYS, self.cluster.etcd_tls)

    def settled(self, timeout: float = 3.0) -> dict[str, int]:
        """A snapshot once the controller's own loops stopped writing (after an accepted write)."""
        return settle(self.snapshot, timeout, 0.15)

    def call(self, method: str, request: Message) -> tuple[grpc.StatusCode, str]:
        try:
            getattr(self.stub, method)(request, timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    def current_version(self, method: str, request: Any) -> int:
        try:
            if method == "UpdateNode":
                return int(self.stub.GetNode(GetNodeRequest(node=request.node)).meta.version)
            if method == "UpdateCluster":
                return int(self.stub.GetCluster(GetClusterRequest()).meta.version)
            service = self.stub.GetService(GetServiceRequest(service=request.service))
            return int(service.meta.version)
        except grpc.RpcError:
            return 0

    def ensure_base(self) -> bool:
        """The service and the node the hints point at exist (a fuzzed removal may have
        removed them); True when one had to be made again."""
        spec = ServiceSpec(name=BASE_SERVICE)
        spec.task.container.image = "alpine"
        spec.replicated.replicas = 1
        wrote = False
        code, _ = self.call("GetService", GetServiceRequest(service=BASE_SERVICE))
        if code == grpc.StatusCode.NOT_FOUND:
            self.stub.CreateService(CreateServiceRequest(spec=spec), timeout=20)
            wrote = True
        code, _ = self.call("GetNode", GetNodeRequest(node=FAKE_NODE_ID))
        if code == grpc.StatusCode.NOT_FOUND:
            self.put_fake_node()
            wrote = True
        return wrote

    def put_fake_node(self) -> None:
        """A DOWN node, as one whose agent stopped: nothing updates it in the background."""
        node = Node(id=FAKE_NODE_ID)
        node.spec.name = FAKE_NODE
        node.spec.availability = NodeSpec.ACTIVE
        node.status.state = NodeStatus.DOWN
        records = [
            (f"{PREFIX}nodes/{FAKE_NODE_ID}", node.SerializeToString()),
            (f"{PREFIX}names/nodes/{FAKE_NODE}", FAKE_NODE_ID.encode()),
        ]
        tls_args = self.cluster.etcd_tls.etcdctl_args() if self.cluster.etcd_tls else []
        for key, value in records:
            subprocess.run(
                ["etcdctl", "--endpoints", self.etcd, *tls_args, "put", key],
                input=value,
                env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=20,
                check=True,
            )

    def check(self, method: str, request: Any, fix_version: bool) -> None:
        wrote = self.ensure_base()
        if fix_version and method in ("UpdateNode", "UpdateService", "UpdateCluster"):
            request.version = self.current_version(method, request)
        mutating = method in MUTATING
        # after an accepted write check() waits until the controller is quiet again
        before = (self.settled() if wrote else self.snapshot()) if mutating else {}
        code, details = self.call(method, request)
        self.results.setdefault(method, set()).add(code.name)
        process = self.cluster.controller.process if self.cluster.controller else None
        assert process is not None and process.poll() is None, "the controller died"
        check_answer(method, request, code, details, MAX_MESSAGE_BYTES)
        if mutating and code != grpc.StatusCode.OK:
            after = self.snapshot()
            changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
            assert not changed, f"rejected {method} ({code.name}: {details[:300]}) wrote {changed}"
        elif mutating:
            self.settled()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    cluster = Cluster(root)
    stub = None
    try:
        cluster.start_controller()
        stub = cluster.control()
        info = stub.GetInfo(GetInfoRequest(), timeout=10)
        fuzzed = Fuzzed(cluster, stub, info.etcd_endpoints[0])
        fuzzed.put_fake_node()
        fuzzed.ensure_base()
        yield fuzzed
    finally:
        if stub is not None:
            stub.close()
        cluster.stop()


def _fuzz(fuzzed: Fuzzed, method: str, examples: int) -> None:
    run_examples(
        examples,
        functools.partial(fuzzed.check, method),
        request=request_strategy(method),
        fix_version=st.booleans(),
    )


@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_requests_get_a_deliberate_answer_and_rejections_write_nothing(
    fuzzed: Fuzzed, method: str
) -> None:
    _fuzz(fuzzed, method, 40 if method in MUTATING else 25)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_requests_longer(fuzzed: Fuzzed, method: str) -> None:
    _fuzz(fuzzed, method, 500)


def test_the_fuzzer_reaches_past_validation(fuzzed: Fuzzed) -> None:
    """Almost-valid specs are accepted sometimes: the fuzzer is not only testing the first check."""
    for method in ("CreateService", "UpdateService", "UpdateNode"):
        _fuzz(fuzzed, method, 20)
    assert "OK" in fuzzed.results["CreateService"], fuzzed.results
    assert "INVALID_ARGUMENT" in fuzzed.results["CreateService"], fuzzed.results


@pytest.mark.parametrize(
    ("padding", "codes"),
    [
        (MAX_MESSAGE_BYTES, {grpc.StatusCode.RESOURCE_EXHAUSTED}),
        (MAX_MESSAGE_BYTES - 128 * 1024, {grpc.StatusCode.INVALID_ARGUMENT}),
    ],
)
def test_an_oversized_request_is_refused_and_writes_nothing(
    fuzzed: Fuzzed, padding: int, codes: set[grpc.StatusCode]
) -> None:
    spec = ServiceSpec(name="fz-huge")
    spec.task.container.image = "alpine"
    spec.replicated.replicas = 1
    chunk = 30 * 1024
    spec.task.container.command.extend(["x" * chunk] * (padding // chunk + 1))
    before = fuzzed.settled()
    code, details = fuzzed.call("CreateService", CreateServiceRequest(spec=spec))
    assert code in codes, details[:500]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.startswith("spec"), details[:500]
    assert fuzzed.snapshot() == before
    assert fuzzed.call("GetService", GetServiceRequest(service="fz-huge"))[0] == (
        grpc.StatusCode.NOT_FOUND
    )


def _spec(name: str = "fz-regress", **container: Any) -> ServiceSpec:
    spec = ServiceSpec(name=name)
    spec.task.container.image = "alpine"
    for key, value in container.items():
        getattr(spec.task.container, key).extend(value)
    spec.replicated.replicas = 1
    return spec


@pytest.mark.parametrize(
    ("method", "request_", "field_name"),
    [
        ("CreateService", CreateServiceRequest(spec=_spec("fz-nl\n")), "spec.name"),
        (
            "CreateService",
            CreateServiceRequest(spec=_spec(command=["a\0b"])),
            "spec.task.container.command",
        ),
        (
            "CreateService",
            CreateServiceRequest(spec=_spec(env=["A=\0"])),
            "spec.task.container.env",
        ),
        (
            "RotateJoinTokens",
            control_pb2.CreateJoinTokenRequest(role="agent", ttl_seconds=float("nan")),
            "ttl_seconds",
        ),
        (
            "CreateJoinToken",
            control_pb2.CreateJoinTokenRequest(role="agent", ttl_seconds=1e300),
            "ttl_seconds",
        ),
        (
            "CreateJoinToken",
            control_pb2.CreateJoinTokenRequest(role="agent", max_uses=-1),
            "max_uses",
        ),
        ("GetService", GetServiceRequest(service="\0" * 20_000), "service"),
        ("RemoveNode", control_pb2.RemoveNodeRequest(node="n" * 200), "node"),
        ("ListServices", control_pb2.ListServicesRequest(mode="bogus"), "mode"),
        ("GetTask", control_pb2.GetTaskRequest(task=""), "task"),
    ],
)
def test_what_the_fuzzer_found_is_refused_naming_the_field(
    fuzzed: Fuzzed, method: str, request_: Message, field_name: str
) -> None:
    """A trailing newline passed the name pattern; a NaN or huge token TTL was an
    internal error (and RotateJoinTokens had removed the old tokens first); a huge
    reference came back in the error message, too large for gRPC's metadata."""
    before = fuzzed.settled()
    code, details = fuzzed.call(method, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:300])
    assert details.startswith(f"{field_name}: "), details[:300]
    assert len(details) < 1100
    assert fuzzed.snapshot() == before
