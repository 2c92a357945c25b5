"""`service create|update|scale` and `job run`: flags and spec files to a ServiceSpec,
checked before any request is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from dockyard.cli.client import CliError
from dockyard.cli.commands import jobs, service_wait, services, tasks
from dockyard.cli.commands.service_yaml import load_spec_file, spec_from_document
from dockyard.cli.main import cli
from dockyard.v1.control_pb2 import (
    ListNodesResponse,
    ListServicesResponse,
    ListTasksResponse,
    ServiceSummary,
)
from dockyard.v1.types_pb2 import Node, NodeSpec, TaskStatus
from dockyard.v1.workloads_pb2 import (
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    UpdateConfig,
    UpdateStatus,
)
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed() -> str:
    return f"127.0.0.1:{free_port()}"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, list(args), env={"DOCKYARD_HOST": None, "DOCKYARD_CONTEXT": None}
    )
    return result.exit_code, result.stdout, result.stderr


class FakeControl:
    """Stands in for `call`: records requests, answers GetService from `service`."""

    def __init__(self, service: Service | None = None, aborts: int = 0) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.service = service or Service(id="s" * 24, spec=ServiceSpec(name="web"))
        self.service.spec.task.container.image = self.service.spec.task.container.image or "busybox"
        self.service.meta.version = 7
        self.aborts = aborts
        self.running = 0
        self.tasks: list[Any] = []

    def __call__(self, target: Any, stub: Any, method: str, request: Any, **_: Any) -> Any:
        self.requests.append((method, request))
        if method == "GetService":
            return self.service
        if method == "UpdateService" and self.aborts:
            self.aborts -= 1
            self.service.meta.version += 1
            raise CliError("changed since it was read") from Aborted()
        if method in ("CreateService", "UpdateService"):
            return Service(
                id="s" * 24, spec=request.spec if request.spec.name else self.service.spec
            )
        if method == "ListServices":
            desired = (
                self.service.spec.job.completions
                if self.service.spec.HasField("job")
                else self.service.spec.replicated.replicas
            )
            return ListServicesResponse(
                services=[
                    ServiceSummary(service=self.service, running=self.running, desired=desired)
                ]
            )
        if method == "ListTasks":
            return ListTasksResponse(tasks=self.tasks)
        if method == "ListNodes":
            return ListNodesResponse(nodes=[Node(id="n" * 20, spec=NodeSpec(name="node-1"))])
        raise AssertionError(f"unexpected {method}")

    def sent(self, method: str) -> list[Any]:
        return [r for m, r in self.requests if m == method]


class Aborted(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.ABORTED


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> FakeControl:
    fake = FakeControl()
    for module in (services, jobs, service_wait, tasks):
        monkeypatch.setattr(module, "call", fake)
    return fake


ALL_FLAGS = [
    "--name",
    "web",
    "--replicas",
    "5",
    "--constraint",
    "node.labels.zone==a",
    "--constraint",
    "node.hostname!=n3",
    "--placement-pref",
    "spread=node.labels.zone",
    "--max-replicas-per-node",
    "2",
    "--reserve-cpu",
    "0.5",
    "--reserve-memory",
    "64M",
    "--limit-cpu",
    "1",
    "--limit-memory",
    "128M",
    "--limit-pids",
    "100",
    "-e",
    "A=1",
    "--env",
    "B=two words",
    "-w",
    "/srv",
    "-u",
    "app:app",
    "--entrypoint",
    "/bin/sh -c",
    "--hostname",
    "box",
    "--label",
    "tier=front",
    "--container-label",
    "team=web",
    "--cap-add",
    "net_admin",
    "--cap-drop",
    "ALL",
    "--restart-condition",
    "on-failure",
    "--restart-delay",
    "5s",
    "--restart-max-attempts",
    "3",
    "--restart-window",
    "1m",
    "--health-cmd",
    "wget -q localhost",
    "--health-interval",
    "5s",
    "--health-timeout",
    "2s",
    "--health-retries",
    "3",
    "--health-start-period",
    "10s",
    "--stop-grace-period",
    "20s",
    "--update-parallelism",
    "2",
    "--update-delay",
    "10s",
    "--update-order",
    "start-first",
    "--update-failure-action",
    "rollback",
    "--update-monitor",
    "5s",
    "--update-max-failure-ratio",
    "0.2",
    "--rollback-parallelism",
    "3",
    "--rollback-delay",
    "1s",
    "--rollback-order",
    "stop-first",
    "--rollback-failure-action",
    "continue",
    "--rollback-monitor",
    "2s",
    "--rollback-max-failure-ratio",
    "0.5",
    "-p",
    "8080:80",
    "-p",
    "53:53/udp",
    "--network",
    "host",
    "--read-only",
    "--mount",
    "type=bind,source=/srv/data,target=/data,readonly",
    "--mount",
    "type=tmpfs,dst=/cache,tmpfs-size=64m",
]


def test_every_create_flag_lands_in_its_field(control: FakeControl) -> None:
    code, out, err = invoke(
        "-H", "127.0.0.1:1", "service", "create", "-d", *ALL_FLAGS, "busybox:1.36", "sleep", "60"
    )
    assert code == 0, err
    assert out.strip() == "s" * 24
    (request,) = control.sent("CreateService")
    spec = request.spec
    c, r, p = spec.task.container, spec.task.resources, spec.task.placement
    assert (spec.name, spec.replicated.replicas, dict(spec.labels)) == ("web", 5, {"tier": "front"})
    assert (c.image, list(c.command), list(c.entrypoint)) == (
        "busybox:1.36",
        ["sleep", "60"],
        ["/bin/sh", "-c"],
    )
    assert list(c.env) == ["A=1", "B=two words"]
    assert (c.workdir, c.user, c.hostname, c.network, c.read_only) == (
        "/srv",
        "app:app",
        "box",
        "host",
        True,
    )
    assert dict(c.labels) == {"team": "web"}
    assert (list(c.cap_add), list(c.cap_drop)) == (["CAP_NET_ADMIN"], ["ALL"])
    assert list(p.constraints) == ["node.labels.zone==a", "node.hostname!=n3"]
    assert [x.spread for x in p.preferences] == ["node.labels.zone"]
    assert p.max_replicas_per_node == 2
    assert (r.reservations.nano_cpus, r.reservations.memory_bytes) == (500_000_000, 64 << 20)
    assert (r.limits.nano_cpus, r.limits.memory_bytes, r.pids_limit) == (10**9, 128 << 20, 100)
    rp = spec.task.restart_policy
    assert (rp.condition, rp.delay_seconds, rp.max_attempts, rp.window_seconds) == (
        RestartPolicy.ON_FAILURE,
        5,
        3,
        60,
    )
    hc = c.healthcheck
    assert list(hc.test) == ["CMD-SHELL", "wget -q localhost"]
    assert (hc.interval_seconds, hc.timeout_seconds, hc.retries, hc.start_period_seconds) == (
        5,
        2,
        3,
        10,
    )
    assert c.stop_grace_seconds == 20
    u, rb = spec.update, spec.rollback
    assert (
        u.parallelism,
        u.delay_seconds,
        u.order,
        u.failure_action,
        u.monitor_seconds,
        u.max_failure_ratio,
    ) == (2, 10, UpdateConfig.START_FIRST, UpdateConfig.ROLLBACK, 5, 0.2)
    assert (
        rb.parallelism,
        rb.delay_seconds,
        rb.order,
        rb.failure_action,
        rb.monitor_seconds,
        rb.max_failure_ratio,
    ) == (3, 1, UpdateConfig.STOP_FIRST, UpdateConfig.CONTINUE, 2, 0.5)
    assert [(x.published_port, x.target_port, x.protocol) for x in spec.task.ports] == [
        (8080, 80, "tcp"),
        (53, 53, "udp"),
    ]
    assert [(m.type, m.source, m.target, m.read_only, m.tmpfs_size_bytes) for m in c.mounts] == [
        ("bind", "/srv/data", "/data", True, 0),
        ("tmpfs", "", "/cache", False, 64 << 20),
    ]


def test_global_mode_and_defaults(control: FakeControl) -> None:
    assert (
        invoke("service", "create", "-d", "--name", "agent", "--mode", "global", "busybox")[0] == 0
    )
    assert invoke("service", "create", "-d", "--name", "one", "busybox")[0] == 0
    glob, one = (r.spec for r in control.sent("CreateService"))
    assert glob.WhichOneof("mode") == "global"
    assert one.WhichOneof("mode") == "replicated" and one.replicated.replicas == 1
    assert not one.task.container.command


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replicas", "-1"], "invalid --replicas '-1': must be a whole number >= 0"),
        (["--replicas", "many"], "invalid --replicas 'many': not a whole number"),
        (
            ["--constraint", "node.labels.zone=a"],
            "invalid --constraint 'node.labels.zone=a': use KEY==VALUE or KEY!=VALUE",
        ),
        (["--constraint", "node.colour==red"], "unknown key 'node.colour'"),
        (["--constraint", "node.labels.==a"], "needs a valid label key"),
        (["--constraint", "node.name=="], "needs a value after =="),
        (
            ["--update-failure-action", "explode"],
            "invalid --update-failure-action 'explode': use one of pause, continue, rollback",
        ),
        (["--rollback-failure-action", "rollback"], "use one of pause, continue"),
        (["--update-order", "random"], "invalid --update-order 'random'"),
        (["--update-max-failure-ratio", "2"], "must be between 0 and 1"),
        (["--limit-memory", "12q"], "invalid --limit-memory '12q': use a size such as 64M"),
        (["--reserve-memory", "lots"], "invalid --reserve-memory 'lots'"),
        (["--limit-memory", "1k"], "a memory limit below 4 MiB"),
        (
            ["--reserve-memory", "1G", "--limit-memory", "64M"],
            "--reserve-memory is larger than --limit-memory",
        ),
        (["--limit-cpu", "-1"], "invalid --limit-cpu '-1'"),
        (["--reserve-cpu", "x"], "invalid --reserve-cpu 'x': not a number"),
        (["--restart-delay", "5x"], "invalid --restart-delay '5x': use a duration such as"),
        (["--update-delay", "soon"], "invalid --update-delay 'soon'"),
        (["--health-interval", "-1s"], "invalid --health-interval '-1s'"),
        (["--stop-grace-period", "1 minute"], "invalid --stop-grace-period"),
        (["--restart-condition", "always"], "use one of any, on-failure, none"),
        (["--mode", "job"], "invalid --mode 'job': use one of replicated, global"),
        (["--mode", "global", "--replicas", "2"], "a global service has no replica count"),
        (["-e", "=x"], "invalid -e '=x': the variable name is empty"),
        (["-w", "rel"], "invalid -w 'rel': the working directory must be an absolute path"),
        (["--label", "=x"], "--label: malformed label '=x'"),
        (["-p", "80:http"], "invalid -p '80:http': use PUBLISHED:TARGET"),
        (["-p", "80:70000"], "ports must be between 1 and 65535"),
        (["-p", "80:80/sctp"], "the protocol must be tcp or udp"),
        (["--network", "a b"], "invalid --network 'a b': name must be a network's name or ID"),
        (["--placement-pref", "spread=zone"], "spread over a node label"),
        (["--max-replicas-per-node", "-3"], "invalid --max-replicas-per-node '-3'"),
        (["--limit-pids", "x"], "invalid --limit-pids 'x'"),
        (["--timeout", "later"], "invalid --timeout 'later'"),
        (["--cap-add", "NET ADMIN"], "invalid --cap-add 'NET ADMIN'"),
        (["--mount", "type=volume,source=/abs,target=/d"], "a volume's source is its name"),
        (["--mount", "type=nfs,source=x,target=/d"], "unknown type 'nfs'"),
        (["--mount", "type=bind,source=rel,target=/d"], "a bind source must be an absolute"),
        (["--mount", "type=tmpfs,target=cache"], "target must be an absolute path"),
        (["--mount", "type=bind,src=/a,dst=/b,colour=red"], "unknown mount option 'colour'"),
        (["--name", "-web"], "--name: invalid name '-web'"),
    ],
)
def test_bad_create_flags_fail_before_any_request(
    closed: str, flags: list[str], message: str
) -> None:
    args = flags if "--name" in flags else ["--name", "web", *flags]
    code, out, err = invoke("-H", closed, "service", "create", *args, "busybox")
    assert code == 1, err
    assert message in err
    assert err.startswith("dockyard: ") and err.count("\n") == 1 and out == ""
    assert "cannot reach" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["service", "create", "busybox"], "a service needs a name"),
        (["service", "create", "--name", "web"], "an image is required"),
        (["service", "update", "--replicas", "-1", "web"], "invalid --replicas '-1'"),
        (
            ["service", "update", "--constraint-add", "zone=a", "web"],
            "invalid --constraint-add 'zone=a'",
        ),
        (["service", "update", "--env-add", "=1", "web"], "invalid --env-add '=1'"),
        (
            ["service", "update", "--update-failure-action", "explode", "web"],
            "invalid --update-failure-action 'explode'",
        ),
        (["service", "scale", "web"], "invalid scale 'web': use SERVICE=REPLICAS"),
        (["service", "scale", "web=-1"], "invalid replicas of web '-1'"),
        (
            ["job", "run", "--completions", "0", "busybox", "true"],
            "invalid --completions '0': must be a whole number >= 1",
        ),
        (["job", "run", "--parallelism", "x", "busybox", "true"], "invalid --parallelism 'x'"),
        (
            ["job", "run", "--backoff-limit", "-1", "busybox", "true"],
            "invalid --backoff-limit '-1'",
        ),
        (
            ["job", "run", "--limit-memory", "12q", "busybox", "true"],
            "invalid --limit-memory '12q'",
        ),
        (
            ["job", "run", "--constraint", "node.labels.zone=a", "busybox", "true"],
            "invalid --constraint 'node.labels.zone=a'",
        ),
        (["service", "logs", "--tail", "x", "web"], "invalid --tail 'x'"),
    ],
)
def test_other_commands_check_flags_before_any_request(
    closed: str, args: list[str], message: str
) -> None:
    code, out, err = invoke("-H", closed, *args)
    assert code == 1, err
    assert message in err and "cannot reach" not in err
    assert err.count("\n") == 1 and out == ""


def test_update_reads_modifies_and_retries_on_aborted(control: FakeControl) -> None:
    spec = control.service.spec
    spec.replicated.replicas = 2
    spec.task.container.image = "busybox:1"
    spec.task.container.env.extend(["A=1", "B=2"])
    spec.task.placement.constraints.append("node.labels.zone==a")
    spec.labels["old"] = "x"
    control.aborts = 1
    code, _, err = invoke(
        "service",
        "update",
        "-d",
        "--image",
        "busybox:2",
        "--replicas",
        "4",
        "--env-add",
        "A=9",
        "--env-add",
        "C=3",
        "--env-rm",
        "B",
        "--constraint-rm",
        "node.labels.zone==a",
        "--constraint-add",
        "node.name!=n1",
        "--label-add",
        "new=y",
        "--label-rm",
        "old",
        "--force",
        "web",
    )
    assert code == 0, err
    first, second = control.sent("UpdateService")
    assert (first.version, second.version) == (7, 8)  # read again after ABORTED
    assert second.service == "s" * 24 and second.force
    new = second.spec
    assert new.task.container.image == "busybox:2" and new.replicated.replicas == 4
    assert list(new.task.container.env) == ["A=9", "C=3"]
    assert list(new.task.placement.constraints) == ["node.name!=n1"]
    assert dict(new.labels) == {"new": "y"}
    assert len(control.sent("GetService")) == 2


def test_update_gives_up_after_repeated_aborts(control: FakeControl) -> None:
    control.aborts = 100
    code, _, err = invoke("service", "update", "-d", "--replicas", "3", "web")
    assert code == 1 and "kept changing while it was being updated" in err


def test_scale_refuses_a_global_service(control: FakeControl) -> None:
    control.service.spec.__getattribute__("global").SetInParent()
    code, _, err = invoke("service", "scale", "-d", "web=3")
    assert code == 1 and "only replicated services can be scaled" in err
    assert not control.sent("UpdateService")


def test_rollback_sends_rollback(control: FakeControl) -> None:
    assert invoke("service", "rollback", "-d", "web")[0] == 0
    (request,) = control.sent("UpdateService")
    assert request.rollback and request.version == 7


def test_job_run_builds_a_job(control: FakeControl) -> None:
    code, out, err = invoke(
        "job",
        "run",
        "-d",
        "--name",
        "batch",
        "--completions",
        "5",
        "--parallelism",
        "2",
        "--backoff-limit",
        "1",
        "-e",
        "X=1",
        "--limit-memory",
        "64m",
        "busybox",
        "sh",
        "-c",
        "exit 0",
    )
    assert code == 0, err
    assert out == "s" * 24 + "\n"
    (request,) = control.sent("CreateService")
    spec = request.spec
    assert spec.WhichOneof("mode") == "job"
    assert (spec.job.completions, spec.job.parallelism, spec.job.backoff_limit) == (5, 2, 1)
    assert list(spec.task.container.command) == ["sh", "-c", "exit 0"]
    assert list(spec.task.container.env) == ["X=1"]


def test_the_example_spec_file_matches_the_same_flags(control: FakeControl) -> None:
    from_file, _ = load_spec_file(str(REPO / "deploy/examples/web.yaml"))
    code, _, err = invoke(
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "-e",
        "GREETING=hello",
        "-w",
        "/usr/share/nginx/html",
        "--label",
        "tier=frontend",
        "--container-label",
        "team=web",
        "--constraint",
        "node.labels.zone!=maintenance",
        "--placement-pref",
        "spread=node.labels.zone",
        "--max-replicas-per-node",
        "2",
        "--reserve-cpu",
        "0.25",
        "--reserve-memory",
        "64M",
        "--limit-cpu",
        "1",
        "--limit-memory",
        "128M",
        "--limit-pids",
        "256",
        "--restart-condition",
        "any",
        "--restart-delay",
        "5s",
        "--restart-max-attempts",
        "3",
        "--restart-window",
        "1m",
        "--health-cmd",
        "wget -q -O /dev/null http://localhost/",
        "--health-interval",
        "5s",
        "--health-timeout",
        "2s",
        "--health-retries",
        "3",
        "--health-start-period",
        "10s",
        "--stop-grace-period",
        "10s",
        "--update-parallelism",
        "1",
        "--update-delay",
        "10s",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "5s",
        "--update-max-failure-ratio",
        "0.2",
        "--rollback-parallelism",
        "2",
        "--rollback-failure-action",
        "pause",
        "-p",
        "8080:80",
        "--network",
        "bridge",
        "nginx:1.25",
        "nginx",
        "-g",
        "daemon off;",
    )
    assert code == 0, err
    assert control.sent("CreateService")[0].spec == from_file


def test_flags_override_the_spec_file(control: FakeControl, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: api\nimage: busybox\ncommand: sleep 60\nreplicas: 2\n"
        "update_delay_seconds: 3\nrestart_policy: {condition: none}\n"
    )
    code, _, err = invoke("service", "create", "-d", "-f", str(path), "--replicas", "4")
    assert code == 0, err
    spec = control.sent("CreateService")[0].spec
    assert (spec.name, spec.replicated.replicas) == ("api", 4)
    assert list(spec.task.container.command) == ["sleep", "60"]
    assert spec.update.delay_seconds == 3
    assert spec.task.restart_policy.condition == RestartPolicy.NONE


def test_a_proto_shaped_document_is_read_as_a_service_spec() -> None:
    spec, _ = spec_from_document(
        {"name": "web", "replicated": {"replicas": 2}, "task": {"container": {"image": "busybox"}}},
        "s.yaml",
    )
    assert spec.replicated.replicas == 2 and spec.task.container.image == "busybox"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: web\nimage: busybox\nreplicaz: 3\n", "s.yaml: unknown key 'replicaz'"),
        ("name: web\nimage: busybox\nlimit: {memory: 12q}\n", "s.yaml: invalid limit-memory '12q'"),
        (
            "name: web\nimage: busybox\nconstraints: [node.labels.zone=a]\n",
            "s.yaml: invalid constraint 'node.labels.zone=a'",
        ),
        ("name: web\nimage: busybox\nread-only: maybe\n", "s.yaml: invalid read-only 'maybe'"),
        ("- just\n- a list\n", "the spec must be a mapping"),
        ("name: [unclosed\n", "s.yaml: not valid YAML"),
        ("name: web\ntask: {containr: {}}\n", "s.yaml: "),
    ],
)
def test_bad_spec_files_fail_before_any_request(
    closed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text(text)
    code, out, err = invoke("-H", closed, "service", "create", "-f", "s.yaml")
    assert code == 1, err
    assert message in err and "cannot reach" not in err
    assert err.count("\n") == 1 and out == ""


def test_a_missing_spec_file_is_one_line(closed: str, tmp_path: Path) -> None:
    code, _, err = invoke("-H", closed, "service", "create", "-f", str(tmp_path / "no.yaml"))
    assert code == 1 and "cannot read" in err and err.count("\n") == 1


def test_create_waits_until_converged_then_prints_the_id(control: FakeControl) -> None:
    control.service.spec.replicated.replicas = 2
    control.running = 2
    control.tasks = [
        Task(slot=i, desired_state=TaskStatus.RUNNING, status=TaskStatus(state=TaskStatus.RUNNING))
        for i in (1, 2)
    ]
    code, out, err = invoke("service", "create", "--name", "web", "--replicas", "2", "busybox")
    assert code == 0, err
    assert out == "s" * 24 + "\n"
    assert err == "web: 2/2 running\nweb: converged\n"


def test_a_paused_update_ends_the_wait_with_its_message(control: FakeControl) -> None:
    control.service.spec.replicated.replicas = 1
    control.service.update_status.state = UpdateStatus.PAUSED
    control.service.update_status.message = "task 1 failed: exit 3"
    code, _, err = invoke("service", "update", "--image", "busybox:2", "web")
    assert code == 1
    assert err.splitlines()[-1] == "dockyard: web: update paused: task 1 failed: exit 3"


def test_create_gives_up_at_the_timeout(control: FakeControl) -> None:
    control.service.spec.replicated.replicas = 2
    code, _, err = invoke(
        "service", "create", "--name", "web", "--replicas", "2", "--timeout", "10ms", "busybox"
    )
    assert code == 1
    assert "web did not converge within 0.01 s (0/2)" in err.splitlines()[-1]


def _job(control: FakeControl, succeeded: int) -> None:
    control.service.spec.job.completions = 2
    control.service.job_status.succeeded = succeeded
    control.service.job_status.failed = 2 - succeeded
    control.service.job_status.complete = True
    control.running = succeeded


def test_job_run_waits_and_exits_0_when_every_completion_succeeded(
    control: FakeControl,
) -> None:
    _job(control, 2)
    code, out, err = invoke("job", "run", "--completions", "2", "busybox", "true")
    assert code == 0, err
    assert out == "s" * 24 + "\n"
    assert "web: 2 succeeded, 0 failed (of 2 completions)" in err


def test_job_run_exits_1_when_a_completion_failed(control: FakeControl) -> None:
    _job(control, 1)
    code, _, err = invoke("job", "run", "--completions", "2", "busybox", "false")
    assert code == 1
    assert "web: 1 succeeded, 1 failed (of 2 completions)" in err


def test_ls_and_ps_print_tables_json_and_yaml(control: FakeControl) -> None:
    import json

    import yaml

    control.service.spec.replicated.replicas = 2
    control.running = 1
    control.tasks = [
        Task(
            id="t" * 25,
            service_name="web",
            slot=1,
            node_id="n" * 20,
            desired_state=TaskStatus.RUNNING,
            status=TaskStatus(state=TaskStatus.RUNNING),
        )
    ]
    code, out, _ = invoke("service", "ls")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "ID",
        "NAME",
        "MODE",
        "REPLICAS",
        "IMAGE",
        "UPDATE",
        "STATE",
        "PORTS",
    ]
    assert out.splitlines()[1].split() == ["s" * 12, "web", "replicated", "1/2", "busybox"]
    listed = json.loads(invoke("service", "ls", "-o", "json")[1])
    assert listed[0]["service"]["spec"]["name"] == "web" and listed[0]["running"] == "1"
    code, out, _ = invoke("service", "ps", "web")
    assert out.splitlines()[0].startswith("ID")
    # no image in this task: its column is blank
    assert out.splitlines()[1].split()[:5] == ["t" * 12, "web.1", "node-1", "Running", "Running"]
    assert "node-1" in out and "web.1" in out
    tasks = yaml.safe_load(invoke("ps", "-o", "yaml")[1])
    assert tasks[0]["slot"] == 1 and tasks[0]["status"]["state"] == "RUNNING"
    assert invoke("job", "ls", "-q")[1] == "s" * 24 + "\n"
