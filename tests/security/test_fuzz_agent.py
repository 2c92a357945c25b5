"""Fuzzing the agent's local API (Containers, Images, Agent, Volumes, Peer): hypothesis
builds requests from their descriptors (tests/security/fuzzlib.py) plus "almost valid"
ones, and sends them over mutual TLS to one real `dockyard-agent --runtime runc`.

Every answer must be a deliberate status (INVALID_ARGUMENT naming the field), streams end
with one too (or are cut by the client after a bound: Wait and followed Logs block by
design), the agent stays up, and a rejected mutating request leaves the containers, the
images, the containers' state directories and the mounts as they were.

What keeps the machine safe: Pull and Push only ever name registries on 127.0.0.1 (every
valid reference is rewritten to the test registry or to a closed port before it is sent);
Load, Save and Import only get paths inside the test's directory (Save only under its
out/ folder) or relative ones, which are refused; fuzzed containers are created but
removed before the next call, so only the fixture's busybox containers run; Exec runs a
few harmless programs in them; everything is removed at teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from dockyard.agent.containers.request import parse_signal
from dockyard.agent.daemon import MAX_MESSAGE_BYTES
from dockyard.common.reference import InvalidReference, Reference, parse_reference
from dockyard.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    containers_pb2_grpc,
    images_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from dockyard.v1 import containers_pb2 as cpb
from dockyard.v1 import images_pb2 as ipb
from dockyard.v1.types_pb2 import GetVersionRequest
from tests.conftest import Cluster, Daemon
from tests.images.conftest import _start
from tests.network.conftest import free_subnet
from tests.ports import free_port
from tests.runtime.conftest import _have_runc, cleanup_everything, cleanup_network
from tests.security.fuzzlib import (
    ALLOWED,
    MessageStrategies,
    build_message,
    check_answer,
    edge_integers,
    nasty_strings,
    run_examples,
    settle,
)

pytestmark = pytest.mark.skipif(not _have_runc(), reason="needs root, runc, conmon, busybox")

OK = grpc.StatusCode.OK
SERVICES = {
    "Containers": cpb.DESCRIPTOR.services_by_name["Containers"],
    "Images": ipb.DESCRIPTOR.services_by_name["Images"],
    "Agent": agent_pb2.DESCRIPTOR.services_by_name["Agent"],
    "Volumes": cpb.DESCRIPTOR.services_by_name["Volumes"],
    "Peer": peer_pb2.DESCRIPTOR.services_by_name["Peer"],
}
CALLS = [f"{name}/{m.name}" for name, service in SERVICES.items() for m in service.methods]
STREAMS = {"Images/Pull", "Images/Push", "Containers/Logs", "Containers/Exec", "Peer/FetchBlob"}
READ_ONLY = {
    "Containers/List",
    "Containers/Inspect",
    "Containers/Logs",
    "Containers/Stats",
    "Containers/Wait",
    "Images/List",
    "Images/Inspect",
    "Agent/GetVersion",
    "Agent/GetAgentInfo",
    "Volumes/List",
    "Volumes/Inspect",
    "Peer/FetchBlob",
}
MUTATING = set(CALLS) - READ_ONLY
TIMEOUTS = {"Containers/Wait": 1.5, "Images/Pull": 60.0, "Images/Push": 60.0}
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGKILL)  # fz-base traps TERM; init ignores the rest
DELIBERATE = ALLOWED | {grpc.StatusCode.DATA_LOSS}  # a blob that does not match its digest

# The containers every example starts from: name -> (command, status).
BASE = {
    "fz-base": (
        [
            "sh",
            "-c",
            "echo fz-out; echo fz-err >&2; trap 'exit 0' TERM; while :; do sleep 0.2; done",
        ],
        "running",
    ),
    "fz-created": (["true"], "created"),
    "fz-exited": (["sh", "-c", "echo done; exit 3"], "exited"),
}
# str.isdigit() holds for them, but int() takes only some: superscript one, an
# Arabic-Indic one after a uid, a fullwidth one.
UNICODE_DIGITS = ["\u00b9", "0:\u0661", "\uff11"]
STUBBORN = "fz-stubborn"  # runs `sleep`, which as a container's init ignores SIGTERM
SAFE_PROGRAMS = frozenset({"true", "false", "echo", "id", "pwd", "printenv", "whoami", "uname"})
SAFE_COMMANDS = [
    ["true"],
    ["false"],
    ["echo", "fz"],
    ["id"],
    ["printenv"],
    ["sh", "-c", "echo out; echo err >&2; exit 3"],
    ["sh", "-c", "head -c 300000 /dev/zero"],
]


@functools.cache
def applets() -> frozenset[str]:
    """What the busybox image can run (every applet is a link in its /bin)."""
    listed = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True)
    return frozenset([*listed.stdout.split(), "busybox"])


# -- what may be sent ------------------------------------------------------------


def confine(root: Path, text: str) -> str:
    """`text` when relative (the agent refuses it) or inside `root`; else a path in `root`."""
    if not text.startswith("/"):
        return text
    normal = os.path.normpath(text)
    if normal == str(root) or normal.startswith(f"{root}/"):
        return text
    return f"{root}/outside"


def to_loopback(text: str, hosts: tuple[str, str]) -> str:
    """A valid reference moved to one of `hosts` (loopback); anything else as it is."""
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return text
    if ref.registry in hosts:
        return text
    return str(Reference(hosts[len(text) % 2], ref.repository, ref.tag, ref.digest))


def harmless(command: list[str]) -> list[str]:
    """Only a few programs that end at once and print little run in a container; other
    names stay only when the image has no such program (a path never does)."""
    if not command or command in SAFE_COMMANDS or command[0] in SAFE_PROGRAMS:
        return command
    runnable = "/" in command[0] or command[0] in applets()
    return ["true"] if runnable else command


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _mounts(under: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sorted(line.split()[4] for line in f if str(under) in line)


# -- the agent under test --------------------------------------------------------


@dataclass
class AgentUnderFuzz:
    cluster: Cluster
    name: str
    files: Path
    registry: str
    closed: str
    channel: grpc.Channel
    cgroup: str
    busybox: str = ""
    busybox_id: str = ""
    results: dict[str, set[str]] = field(default_factory=dict)
    dirty: bool = True  # a call may have changed things in the background: settle first
    signalled: bool = False  # fz-base got a signal (STOP, say)
    ending: bool = False  # ... one that ends it

    @property
    def state_dir(self) -> Path:
        return self.cluster.root / f"agent-{self.name}"

    @property
    def daemon(self) -> Daemon:
        return self.cluster.agents[self.name]

    @property
    def base_archive(self) -> Path:
        return self.files / "base" / "busybox.tar"

    def stub(self, service: str) -> Any:
        stubs = {
            "Containers": containers_pb2_grpc.ContainersStub,
            "Images": images_pb2_grpc.ImagesStub,
            "Agent": agent_pb2_grpc.AgentStub,
            "Volumes": containers_pb2_grpc.VolumesStub,
            "Peer": peer_pb2_grpc.PeerStub,
        }
        return stubs[service](self.channel)

    def call(
        self, call: str, request: Message, timeout: float | None = None
    ) -> tuple[grpc.StatusCode, str, list[Any]]:
        """Send one request; a stream is read to its end (its deadline bounds it)."""
        service, method = call.split("/")
        if timeout is None:
            follow = call == "Containers/Logs" and getattr(request, "follow", False)
            timeout = 1.5 if follow else TIMEOUTS.get(call, 30.0)
        try:
            answer = getattr(self.stub(service), method)(request, timeout=timeout)
            return OK, "", list(answer) if call in STREAMS else [answer]
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", []

    def ok(self, call: str, request: Message, timeout: float | None = None) -> Any:
        code, details, replies = self.call(call, request, timeout)
        assert code == OK, f"{call}: {code.name}: {details[:500]}\n{self.daemon.log()[-3000:]}"
        return replies[-1] if replies else None

    # -- state ------------------------------------------------------------------

    def snapshot(self) -> dict[str, list[Any]]:
        """What a rejected request must not change."""
        containers = self.ok("Containers/List", cpb.ListContainersRequest(all=True)).containers
        images = self.ok("Images/List", ipb.ListImagesRequest()).images
        return {
            "containers": sorted((c.id, c.name, c.state.status) for c in containers),
            "images": sorted((i.repository, i.tag, i.id) for i in images),
            "container dirs": _listing(self.state_dir / "runtime" / "containers")
            + _listing(self.state_dir / "containers"),
            "mounts": _mounts(self.state_dir),
            "volumes": _listing(self.state_dir / "volumes"),
            "saved files": _listing(self.files / "out"),
        }

    def settled(self, timeout: float = 5.0) -> dict[str, list[Any]]:
        """A snapshot once background work (exits, unmounts) stopped changing it."""
        return settle(self.snapshot, timeout, 0.1)

    def ensure_base(self) -> bool:
        """Put back the busybox image and the base containers, and remove every other
        container (so no fuzzed one ever runs); True when something changed."""
        if self.dirty:
            self.quiesce()
        changed = False
        code, _, replies = self.call("Images/Inspect", ipb.ImageRef(image=self.busybox))
        if code != OK or replies[0].id != self.busybox_id:
            self.ok("Images/Load", ipb.LoadImagesRequest(path=str(self.base_archive)))
            changed = True
        records = self.ok("Containers/List", cpb.ListContainersRequest(all=True)).containers
        current = {c.name: c.state.status for c in records}
        for name in set(current) - set(BASE):
            self.ok("Containers/Remove", cpb.RemoveContainerRequest(container=name, force=True))
            changed = True
        for name, (command, status) in BASE.items():
            if current.get(name) != status:
                self._restore(name, command, status, current.get(name))
                changed = True
        if self.signalled and current.get("fz-base") == "running":  # after a STOP, say
            self.call(
                "Containers/Kill", cpb.KillContainerRequest(container="fz-base", signal="CONT")
            )
        self.signalled = False
        return changed

    def quiesce(self) -> None:
        """Wait for the containers about to exit: a started one but fz-base, and fz-base
        after a signal that ends it (it exits at its next loop)."""
        records = self.ok("Containers/List", cpb.ListContainersRequest()).containers
        for record in records:
            if record.name != "fz-base" or self.ending:
                self.call("Containers/Wait", cpb.ContainerRef(container=record.id), timeout=10)
        self.ending = False

    def _restore(self, name: str, command: list[str], status: str, now: str | None) -> None:
        if now is not None and (now == "dead" or status == "created"):
            self.ok("Containers/Remove", cpb.RemoveContainerRequest(container=name, force=True))
            now = None
        if now is None:
            self.ok(
                "Containers/Create",
                cpb.CreateContainerRequest(image=self.busybox, name=name, command=command),
            )
        ref = cpb.ContainerRef(container=name)
        if status != "created" and now != "running":
            self.ok("Containers/Start", ref)
        if status == "exited":
            self.ok("Containers/Wait", ref, timeout=30)

    # -- one example --------------------------------------------------------------

    def prepare(self, call: str, request: Any) -> None:
        """Make a request safe to send (see the module docstring), then check it is."""
        hosts = (self.registry, self.closed)
        if call in ("Images/Pull", "Images/Push"):
            request.image = to_loopback(request.image, hosts)
            with contextlib.suppress(InvalidReference):
                assert parse_reference(request.image).registry in hosts, request.image
        elif call in ("Images/Load", "Images/Import"):
            request.path = confine(self.files, request.path)
        elif call == "Images/Save":
            request.path = confine(self.files / "out", request.path)
        elif call == "Containers/Create":
            for volume in request.volumes:
                volume.host_path = confine(self.files / "vol", volume.host_path)
        elif call == "Containers/Exec":
            command = harmless(list(request.command))
            del request.command[:]
            request.command.extend(command)

    def alive(self) -> None:
        process = self.daemon.process
        assert process is not None and process.poll() is None, f"the agent died\n{self.log()}"
        code, details, _ = self.call("Agent/GetVersion", GetVersionRequest())
        assert code == OK, f"GetVersion after the call: {code.name} {details}\n{self.log()}"

    def log(self) -> str:
        return self.daemon.log()[-4000:]

    def check(self, call: str, request: Any) -> None:
        self.prepare(call, request)
        changed = self.ensure_base()
        mutating = call in MUTATING
        before = (self.settled() if changed or self.dirty else self.snapshot()) if mutating else {}
        self.dirty = False
        code, details, replies = self.call(call, request)
        self.results.setdefault(call, set()).add(code.name)
        self.alive()
        allowed = DELIBERATE
        if call == "Containers/Wait" or (call == "Containers/Logs" and request.follow):
            allowed = allowed | {grpc.StatusCode.DEADLINE_EXCEEDED}  # blocks by design
        check_answer(call, request, code, details, MAX_MESSAGE_BYTES, frozenset(allowed))
        if code == OK:
            self._check_stream_end(call, replies)
        if mutating and code != OK:
            after = self.snapshot()
            changed_parts = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
            assert not changed_parts, (
                f"rejected {call} ({code.name}: {details[:300]}) changed {changed_parts}"
            )
        self.dirty = mutating and code == OK
        self.signalled = call == "Containers/Kill" and code == OK
        self.ending = self.signalled and parse_signal(request.signal) in ENDING_SIGNALS

    def run_container(self, request: Any) -> None:
        """Create, start, wait for, read and remove one container: every answer is
        deliberate and nothing of the container is left behind."""
        self.prepare("Containers/Create", request)
        self.ensure_base()
        self.dirty = True
        code, details, replies = self.call("Containers/Create", request)
        self.results.setdefault("run", set()).add(code.name)
        check_answer("Containers/Create", request, code, details, MAX_MESSAGE_BYTES, DELIBERATE)
        if code != OK:
            return
        cid = replies[0].id
        ref = cpb.ContainerRef(container=cid)
        for call, message in (
            ("Containers/Start", ref),
            ("Containers/Wait", ref),
            ("Containers/Logs", cpb.LogsRequest(container=cid)),
            ("Containers/Remove", cpb.RemoveContainerRequest(container=cid, force=True)),
        ):
            code, details, _ = self.call(call, message, timeout=30)
            check_answer(call, message, code, details, MAX_MESSAGE_BYTES, DELIBERATE)
        self.alive()
        deadline = time.monotonic() + 10
        while (left := self.leftovers(cid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"container {cid[:12]} ({request}) left {left}"

    def stop_stubborn(self, timeout: float) -> None:
        """Stop fz-stubborn (which ignores SIGTERM): an accepted Stop returns once its
        timeout is over, never later."""
        self.ok("Containers/Start", cpb.ContainerRef(container=STUBBORN))
        request = cpb.StopContainerRequest(
            container=STUBBORN, timeout_seconds=timeout, has_timeout=True
        )
        started = time.monotonic()
        code, details, _ = self.call("Containers/Stop", request, timeout=10)
        check_answer("Containers/Stop", request, code, details, MAX_MESSAGE_BYTES, DELIBERATE)
        if code == OK:
            assert time.monotonic() - started < max(timeout, 0) + 5, timeout

    def leftovers(self, cid: str) -> list[str]:
        """What a removed container left: state dirs, mounts, cgroups."""
        dirs = [
            *self.state_dir.glob(f"runtime/containers/{cid}*"),
            *self.state_dir.glob(f"containers/{cid}*"),
        ]
        cgroups = [
            *Path("/sys/fs/cgroup").glob(f"{self.cgroup}/{cid}"),
            *Path("/sys/fs/cgroup").glob(f"*/{self.cgroup}/{cid}"),
        ]
        mounts = [m for m in _mounts(self.state_dir) if cid in m]
        return [str(p) for p in [*dirs, *cgroups]] + mounts

    @staticmethod
    def _check_stream_end(call: str, replies: list[Any]) -> None:
        if call in ("Images/Pull", "Images/Push"):
            assert replies and replies[-1].done, f"{call} ended without a done event"
        elif call == "Containers/Exec":
            assert replies and replies[-1].WhichOneof("output") == "exit_code", replies[-1:]


# -- inputs on disk ---------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_inputs(files: Path) -> None:
    """Archives to load and import: good ones, and broken ones a user could have."""
    inputs = files / "in"
    for folder in ("in", "out", "vol", "base"):
        (files / folder).mkdir(parents=True, exist_ok=True)
    _tar(inputs / "rootfs.tar", {"hello.txt": b"hi\n", "etc/passwd": b"root:x:0:0::/:/bin/sh\n"})
    _tar(inputs / "escape.tar", {"../escape.txt": b"out\n"})
    _tar(inputs / "absolute.tar", {"/abs.txt": b"out\n"})
    _tar(inputs / "oci-bad-json.tar", {"oci-layout": b"{}", "index.json": b"{"})
    _tar(
        inputs / "oci-no-digest.tar",
        {
            "oci-layout": b"{}",
            "index.json": json.dumps({"manifests": [{"mediaType": "x"}]}).encode(),
        },
    )
    _tar(inputs / "docker-dict.tar", {"manifest.json": b"{}"})
    _tar(inputs / "docker-list.tar", {"manifest.json": b'[{"Config": 1}]'})
    _tar(inputs / "docker-missing.tar", {"manifest.json": b'[{"Config": "c", "Layers": []}]'})
    (inputs / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    (inputs / "empty.tar").write_bytes(b"")


def paths(files: Path) -> st.SearchStrategy[str]:
    """Paths for Load, Save and Import: the inputs, places in out/, garbage."""
    inputs = sorted(str(p) for p in (files / "in").iterdir())
    out = files / "out"
    special = [
        str(files / "in"),
        str(out),
        f"{out}/",
        f"{out}/fz.tar",
        f"{out}/no/fz.tar",
        f"{out}/fz\x00.tar",
        f"{out}/{'a' * 300}",
        f"{out}/../in/rootfs.tar",
        str(files),
    ]
    return st.one_of(
        st.sampled_from(inputs + special),
        nasty_strings.map(lambda s: f"{out}/{s}"),
        nasty_strings,  # relative, mostly: refused (absolute ones are confined)
    )


# -- strategies -----------------------------------------------------------------------


def messages(fz: AgentUnderFuzz) -> MessageStrategies:
    images = [
        fz.busybox,
        fz.busybox_id[7:19],
        fz.busybox_id,
        "busybox",
        f"{fz.registry}/fz/missing:1",
    ]
    refs = [f"{fz.registry}/fz/tagged:1", "fz-tag:v1", f"fz-tag@sha256:{'a' * 64}", fz.busybox]
    hints = {
        "container": [*BASE, "/fz-base", "fz-nosuch", "fz"],
        "name": [
            "fz-new",
            "fz-base",
            "/fz-new",
            "no",
            "always",
            "on-failure",
            "on-failure:2",
            "unless-stopped",
            "on-failure:x",
        ],
        "image": images,
        "images": images,
        "source": images,
        "target": refs,
        "reference": refs,
        "command": ["true", "echo", "sh", "-c"],
        "entrypoint": ["sh"],
        "env": ["A=1", "B=", "=x", "A", "PATH=/bin"],
        "workdir": ["/", "/tmp", "tmp"],
        "user": [
            "root",
            "0",
            "0:0",
            "nobody",
            "65534:65534",
            "nosuchuser",
            "1:2:3",
            ":",
            *UNICODE_DIGITS,
        ],
        "network": ["none", "host", "bridge"],
        "hostname": ["fz-host", "a" * 64, "-a"],
        "cap_add": ["NET_ADMIN", "CAP_SYS_ADMIN", "ALL", "chown", "BOGUS"],
        "cap_drop": ["ALL", "CHOWN", "BOGUS"],
        "host_path": [str(fz.files / "vol")],
        "container_path": ["/data", "data", "/"],
        "signal": [
            "KILL",
            "TERM",
            "HUP",
            "9",
            "SIGUSR1",
            "0",
            "65",
            "STOP",
            "sigterm",
            "-1",
            *UNICODE_DIGITS,
        ],
    }
    return MessageStrategies(hints, {"path": paths(fz.files)})


def _create_fields(fz: AgentUnderFuzz) -> dict[str, st.SearchStrategy[Any]]:
    """One strategy per create field, for "almost valid" requests (one or two set)."""
    sizes = st.one_of(
        edge_integers(-(2**63), 2**63 - 1), st.sampled_from([6 * 2**20 - 1, 6 * 2**20, 2**40])
    )
    volumes = st.builds(
        cpb.VolumeSpec,
        host_path=st.sampled_from(
            [str(fz.files / "vol"), str(fz.files / "vol" / "missing"), "vol", ""]
        ),
        container_path=st.sampled_from(["/data", "data", "/", "/proc/x", "/data\x00"]),
        read_only=st.booleans(),
    )
    return {
        "name": st.one_of(st.from_regex(r"\Afz-[a-z0-9]{1,8}\Z"), nasty_strings),
        "env": st.lists(
            st.one_of(st.sampled_from(["A=1", "B=", "=x", "A"]), nasty_strings), max_size=5
        ),
        "workdir": st.one_of(st.sampled_from(["/", "/tmp", "/nonexistent", "tmp"]), nasty_strings),
        "user": st.one_of(
            st.sampled_from(["nobody", "65534:65534", "nosuchuser", "1:2:3", *UNICODE_DIGITS]),
            nasty_strings,
        ),
        "memory_bytes": sizes,
        "nano_cpus": sizes,
        "pids_limit": sizes,
        "read_only": st.booleans(),
        "auto_remove": st.booleans(),
        "volumes": st.lists(volumes, max_size=3),
        "restart_policy": st.builds(
            cpb.RestartPolicySpec,
            name=st.sampled_from(
                [
                    "",
                    "no",
                    "always",
                    "on-failure",
                    "on-failure:3",
                    "unless-stopped",
                    "on-failure:x",
                    "bogus",
                ]
            ),
            max_retries=edge_integers(-(2**31), 2**31 - 1),
        ),
        "network": st.one_of(st.sampled_from(["none", "host", "bridge"]), nasty_strings),
        "labels": st.dictionaries(nasty_strings, nasty_strings, max_size=5),
        "cap_add": st.lists(
            st.sampled_from(["NET_ADMIN", "ALL", "chown", "BOGUS", ""]), max_size=3
        ),
        "cap_drop": st.lists(st.sampled_from(["ALL", "CHOWN", "BOGUS"]), max_size=3),
        "hostname": st.one_of(st.sampled_from(["fz-host", "a" * 64, "-a"]), nasty_strings),
        "entrypoint": st.lists(nasty_strings, max_size=3),
        "clear_entrypoint": st.booleans(),
        "command": st.lists(nasty_strings, min_size=1, max_size=3),
    }


@st.composite
def almost_valid_creates(
    draw: Callable[..., Any], fz: AgentUnderFuzz, runnable: bool = False
) -> Message:
    """A busybox create with a harmless command and one or two fields at an edge
    (`runnable`: never another command or entrypoint, as the container will run)."""
    perturb = _create_fields(fz)
    if runnable:
        del perturb["command"], perturb["entrypoint"]
    values: dict[str, Any] = {"image": fz.busybox, "command": draw(st.sampled_from(SAFE_COMMANDS))}
    for name in draw(st.lists(st.sampled_from(sorted(perturb)), max_size=2, unique=True)):
        values[name] = draw(perturb[name])
    return build_message(cpb.CreateContainerRequest, values)


timestamps = st.builds(
    Timestamp, seconds=edge_integers(-(2**63), 2**63 - 1), nanos=edge_integers(-(2**31), 2**31 - 1)
)
bases = st.sampled_from(sorted(BASE))


def request_strategy(fz: AgentUnderFuzz, call: str) -> st.SearchStrategy[Message]:
    service, method = call.split("/")
    generic = messages(fz).message_of(SERVICES[service].methods_by_name[method].input_type)
    special: dict[str, st.SearchStrategy[Message]] = {
        "Containers/Create": almost_valid_creates(fz),
        "Containers/Exec": st.builds(
            cpb.ExecRequest,
            container=bases,
            command=st.sampled_from(SAFE_COMMANDS),
            env=st.lists(st.sampled_from(["A=1", "B=", "=x", "A\x00=1"]), max_size=2),
            user=st.sampled_from(["", "nobody", "0:0", "nosuchuser", "1:2:3", *UNICODE_DIGITS]),
            workdir=st.sampled_from(["", "/", "/tmp", "/nonexistent", "tmp"]),
        ),
        "Containers/Logs": st.builds(
            cpb.LogsRequest,
            container=bases,
            follow=st.booleans(),
            tail=edge_integers(-(2**31), 2**31 - 1),
            has_tail=st.booleans(),
            since=timestamps,
            timestamps=st.booleans(),
        ),
        "Containers/Stop": st.builds(
            cpb.StopContainerRequest,
            container=bases,
            has_timeout=st.booleans(),
            timeout_seconds=st.one_of(st.floats(), st.sampled_from([0.0, 2.0, 1e300])),
        ),
        "Images/Tag": st.builds(
            ipb.TagImageRequest,
            source=st.just(fz.busybox),
            target=st.one_of(st.sampled_from([f"{fz.registry}/fz/t:1", "fz-t:1"]), nasty_strings),
        ),
        "Images/Pull": st.builds(
            ipb.PullImageRequest,
            image=st.sampled_from(
                [fz.busybox, f"{fz.registry}/fz/missing:1", f"{fz.closed}/fz/x:1"]
            ),
        ),
        "Images/Save": st.builds(
            ipb.SaveImagesRequest, images=st.just([fz.busybox]), path=paths(fz.files)
        ),
        "Peer/FetchBlob": st.builds(
            peer_pb2.FetchBlobRequest,
            digest=st.sampled_from(
                [fz.busybox_id, "sha256:" + "0" * 64, "sha256:" + fz.busybox_id[7:].upper()]
            ),
        ),
    }
    return st.one_of(generic, special[call]) if call in special else generic


# -- fixtures -------------------------------------------------------------------------


def _wait_for_agent(fz: AgentUnderFuzz, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while fz.call("Images/List", ipb.ListImagesRequest())[0] != OK:
        process = fz.daemon.process
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise AssertionError(f"the agent did not come up:\n{fz.log()}")
        time.sleep(0.1)


def _cleanup(state_dir: Path, cgroup: str, bridge: str) -> None:
    cleanup_everything(state_dir / "runtime", cgroup)
    cleanup_network(state_dir / "network", bridge)  # its own bridge, made or not
    for mount in sorted(_mounts(state_dir), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


@contextlib.contextmanager
def loopback_registry(directory: Path) -> Iterator[str]:
    """The test docker-registry on a free loopback port; its host:port."""
    directory.mkdir()
    for host, _ in _start(directory):
        yield host


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentUnderFuzz]:
    root = tmp_path_factory.mktemp("fuzz-agent")
    cluster = Cluster(root / "cluster")
    cluster.root.mkdir()
    cgroup = f"dockyard-fuzz-{uuid.uuid4().hex[:8]}"
    bridge = f"dyfz-{uuid.uuid4().hex[:8]}"  # not the default dockyard0: the test's own
    files = root / "files"
    make_inputs(files)
    (files / "auth.json").write_text("{}")  # not the credentials of the machine's user
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(loopback_registry(root / "registry"))
        stack.callback(_cleanup, cluster.root / "agent-fz", cgroup, bridge)
        stack.callback(cluster.stop)
        cluster.start_controller()
        cluster.start_agent(
            "fz",
            runtime="runc",
            extra=[
                "--cgroup-parent",
                cgroup,
                "--registry-config",
                str(files / "auth.json"),
                "--bridge",
                bridge,
                "--bridge-subnet",
                free_subnet(),
            ],
        )  # not a fixed one
        channel = stack.enter_context(
            grpc.secure_channel(cluster.agent_address("fz"), cluster.admin_credentials())
        )
        under = AgentUnderFuzz(
            cluster, "fz", files, host, f"127.0.0.1:{free_port()}", channel, cgroup
        )
        _wait_for_agent(under)
        _load_busybox(under)
        under.ensure_base()
        yield under


def _load_busybox(fz: AgentUnderFuzz) -> None:
    """Build busybox into a tarball, load it, and push it to the test registry."""
    fz.busybox = f"{fz.registry}/fz/busybox:latest"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard.agent.images.build",
            "busybox",
            "--tag",
            fz.busybox,
            "--output",
            str(fz.base_archive),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    loaded = fz.ok("Images/Load", ipb.LoadImagesRequest(path=str(fz.base_archive)))
    fz.busybox_id = loaded.images[0].id
    shutil.copy(fz.base_archive, fz.files / "in" / "busybox.tar")  # for fuzzed loads
    fz.ok("Images/Push", ipb.PushImageRequest(image=fz.busybox))


# -- the tests ------------------------------------------------------------------------


def _fuzz(fz: AgentUnderFuzz, call: str, examples: int) -> None:
    run_examples(examples, functools.partial(fz.check, call), request=request_strategy(fz, call))


def _examples(call: str) -> int:
    return 60 if call in MUTATING else 25


@pytest.mark.parametrize("call", CALLS)
def test_fuzzed_requests_get_a_deliberate_answer_and_rejections_change_nothing(
    fz: AgentUnderFuzz, call: str
) -> None:
    _fuzz(fz, call, _examples(call))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("call", CALLS)
def test_fuzzed_requests_longer(fz: AgentUnderFuzz, call: str) -> None:
    _fuzz(fz, call, 10 * _examples(call))


def test_the_fuzzer_reaches_past_validation(fz: AgentUnderFuzz) -> None:
    """Almost-valid creates are accepted sometimes: not only the first check is tested."""
    run_examples(
        15, functools.partial(fz.check, "Containers/Create"), request=almost_valid_creates(fz)
    )
    assert "OK" in fz.results["Containers/Create"], fz.results
    assert "INVALID_ARGUMENT" in fz.results["Containers/Create"], fz.results


def _run(fz: AgentUnderFuzz, examples: int) -> None:
    run_examples(examples, fz.run_container, request=almost_valid_creates(fz, runnable=True))
    assert "OK" in fz.results["run"], fz.results


def test_almost_valid_containers_run_and_leave_nothing_behind(fz: AgentUnderFuzz) -> None:
    _run(fz, 25)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_almost_valid_containers_run_longer(fz: AgentUnderFuzz) -> None:
    _run(fz, 250)


def test_stop_waits_no_longer_than_its_timeout(fz: AgentUnderFuzz) -> None:
    fz.ensure_base()
    fz.ok(
        "Containers/Create",
        cpb.CreateContainerRequest(image=fz.busybox, name=STUBBORN, command=["sleep", "3600"]),
    )
    fz.dirty = True
    timeouts = st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0]), st.floats(0, 1)
    )
    try:
        run_examples(10, fz.stop_stubborn, timeout=timeouts)
    finally:
        fz.call("Containers/Remove", cpb.RemoveContainerRequest(container=STUBBORN, force=True))


def _busybox_create(**fields: Any) -> Callable[[AgentUnderFuzz], Message]:
    return lambda fz: cpb.CreateContainerRequest(image=fz.busybox, **fields)


def _file(call: str, name: str) -> Callable[[AgentUnderFuzz], Message]:
    def make(fz: AgentUnderFuzz) -> Message:
        path = str(fz.files / name)
        if call == "Images/Save":
            return ipb.SaveImagesRequest(images=[fz.busybox], path=path)
        if call == "Images/Import":
            return ipb.ImportImageRequest(path=path, reference="fz-import:1")
        return ipb.LoadImagesRequest(path=path)

    return make


REGRESSIONS: dict[str, tuple[str, Callable[[AgentUnderFuzz], Message], str]] = {
    "huge container ref": (
        "Containers/Start",
        lambda _: cpb.ContainerRef(container="é" * 3000),
        "container",
    ),
    "name with a newline": ("Containers/Create", _busybox_create(name="fz-nl\n"), "name"),
    "unknown capability": ("Containers/Create", _busybox_create(cap_add=["BOGUS"]), "cap_add[0]"),
    "unknown user": ("Containers/Create", _busybox_create(user="nosuchuser"), "user"),
    "nothing to run": ("Containers/Create", _busybox_create(clear_entrypoint=True), "command"),
    "since out of range": (
        "Containers/Logs",
        lambda _: cpb.LogsRequest(container="fz-exited", since=Timestamp(seconds=-(2**63))),
        "since",
    ),
    "stop with a NaN timeout": (
        "Containers/Stop",
        lambda _: cpb.StopContainerRequest(
            container="fz-base", timeout_seconds=math.nan, has_timeout=True
        ),
        "timeout_seconds",
    ),
    "superscript signal number": (
        "Containers/Kill",
        lambda _: cpb.KillContainerRequest(container="fz-base", signal="\u00b9"),
        "signal",
    ),
    "superscript uid": ("Containers/Create", _busybox_create(user="\u00b9"), "user"),
    "exec as a superscript uid": (
        "Containers/Exec",
        lambda _: cpb.ExecRequest(container="fz-base", command=["true"], user="0:\u00b9"),
        "user",
    ),
    "exec as unknown user": (
        "Containers/Exec",
        lambda _: cpb.ExecRequest(container="fz-base", command=["true"], user="nosuchuser"),
        "user",
    ),
    "load a file that is no archive": (
        "Images/Load",
        _file("Images/Load", "in/garbage.bin"),
        "path",
    ),
    "load an archive of the wrong shape": (
        "Images/Load",
        _file("Images/Load", "in/docker-list.tar"),
        "path",
    ),
    "save onto a directory": ("Images/Save", _file("Images/Save", "out"), "path"),
    "save to a path with NUL": ("Images/Save", _file("Images/Save", "out/a\0b"), "path"),
    "import an escaping tarball": (
        "Images/Import",
        _file("Images/Import", "in/escape.tar"),
        "path",
    ),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_what_the_fuzzer_found_is_refused_naming_the_field(fz: AgentUnderFuzz, case: str) -> None:
    """Each was an unhandled error (UNKNOWN or INTERNAL), an INVALID_ARGUMENT naming no
    field, an error message too long for gRPC's trailers, a Stop that never returned (NaN),
    or (the newline) accepted."""
    call, make, field_name = REGRESSIONS[case]
    request = make(fz)
    fz.ensure_base()
    before = fz.settled()
    code, details, _ = fz.call(call, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:300])
    assert details.startswith(f"{field_name}: "), details[:300]
    assert len(details) < 1100
    assert fz.snapshot() == before
