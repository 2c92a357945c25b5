"""`dockyard stack deploy` on real runc: a compose file's configs, secrets, env_file,
extra_hosts, DNS, ulimits, sysctls, init, stop signal, log rotation and service templates,
checked from inside the containers; and the configs API (data shown, fields named,
removal refused while in use). One controller and one runc agent for the module."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dockyard.v1.control_pb2 import (
    CreateConfigRequest,
    CreateServiceRequest,
    GetConfigRequest,
    GetServiceRequest,
    ListConfigsRequest,
    RemoveConfigRequest,
    RemoveServiceRequest,
)
from dockyard.v1.workloads_pb2 import ConfigReference, ConfigSpec, ServiceSpec
from tests.agent.conftest import ImageRegistry
from tests.conftest import Cluster
from tests.runtime.conftest import cleanup_everything

pytestmark = [pytest.mark.runc, pytest.mark.registry]
SECRETS_ROOT = Path("/run/dockyard/secrets")

# Each task writes what it sees into /out/<slot>/ (a bind mount of ./out, relative to
# the compose file), then waits; SIGUSR1 (the stop signal) is written down too.
SCRIPT = r"""
d=/out/$SLOT; mkdir -p $d.tmp
env > $d.tmp/env
hostname > $d.tmp/hostname
cat /etc/hosts > $d.tmp/hosts
cat /etc/resolv.conf > $d.tmp/resolv
ulimit -Sn > $d.tmp/nofile_soft; ulimit -Hn > $d.tmp/nofile_hard
cat /proc/sys/net/core/somaxconn > $d.tmp/somaxconn
cat /proc/1/comm > $d.tmp/pid1
cat /etc/app.conf > $d.tmp/config; stat -c '%u %g %a' /etc/app.conf > $d.tmp/config_stat
(echo x > /etc/app.conf) 2> $d.tmp/config_write || true
cat /run/secrets/db_pw > $d.tmp/secret
mv $d.tmp $d
trap 'echo usr1 > /out/stopped-$SLOT; exit 0' USR1
sleep 300 & wait
"""

COMPOSE = """
x-common: &common
  stop_grace_period: 20s
services:
  app:
    <<: *common
    image: {image}
    command: ["sh", "-c", {script}]
    hostname: "{{{{.Service.Name}}}}-{{{{.Task.Slot}}}}"
    env_file: ./app.env
    environment:
      FLAG: true
      SLOT: "{{{{.Task.Slot}}}}"
      SERVICE: "{{{{.Service.Name}}}}"
      NODE: "{{{{.Node.Hostname}}}}"
    volumes: ["./out:/out"]
    configs:
      - source: app_conf
        target: /etc/app.conf
        uid: "1000"
        mode: 0440
    secrets: [db_pw]
    extra_hosts: ["db.example:10.1.2.3"]
    dns: 10.9.9.9
    dns_search: [corp.example]
    ulimits:
      nofile: {{soft: 1234, hard: 2345}}
    sysctls:
      net.core.somaxconn: 1234
    init: true
    stop_signal: SIGUSR1
    logging:
      driver: json-file
      options: {{max-size: 1m, max-file: "2"}}
    restart: always
    deploy:
      replicas: 2
      x-note: accepted and ignored
configs:
  app_conf:
    file: ./app.conf
secrets:
  db_pw:
    file: ./db_pw.txt
"""


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, image_registry: ImageRegistry
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("stack") / "cluster"
    root.mkdir()
    cluster = Cluster(root, resolve_image="always")
    node_ids: list[str] = []
    try:
        cluster.start_controller(["--node-down-grace", "2"])
        cluster.start_agent(
            "s1", runtime="runc", extra=["--cgroup-parent", f"dockyard-test-{root.parent.name}"]
        )
        cluster.wait_for(lambda: cluster.node_state("s1") == "READY", "s1 READY")
        node_ids.extend(n["id"] for n in cluster.nodes().values())
        yield cluster
    finally:
        cluster.stop()
        cleanup_everything(root / "agent-s1" / "runtime", f"dockyard-test-{root.parent.name}")
        for node_id in node_ids:
            secrets = SECRETS_ROOT / node_id
            if secrets.exists():
                subprocess.run(["umount", "-l", str(secrets)], check=False, capture_output=True)
                shutil.rmtree(secrets, ignore_errors=True)
        cluster.cleanup_networks()


def test_a_stack_runs_as_its_compose_file_says(
    cluster: Cluster, image_registry: ImageRegistry, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    (app / "out").mkdir(parents=True)
    (app / "out").chmod(0o777)
    (app / "app.env").write_text("GREETING='hello from env_file'\nFLAG=overridden\n")
    (app / "app.conf").write_text("listen 8080\n")
    (app / "db_pw.txt").write_text("pa55word")
    compose = app / "compose.yml"
    compose.write_text(
        # `$$`: a literal `$` for the shell, as compose interpolates the file
        COMPOSE.format(image=image_registry.busybox, script=json.dumps(SCRIPT.replace("$", "$$"))),
    )
    deployed = cluster.cli("stack", "deploy", "-c", str(compose), "shop", timeout=60)
    assert "Creating config shop_app_conf" in deployed.stderr
    assert "Creating secret shop_db_pw" in deployed.stderr
    assert "Ignoring services.app.restart" in deployed.stderr
    assert "x-note" not in deployed.stderr and "WARN" not in deployed.stderr

    out = app / "out"
    try:
        cluster.wait_for(lambda: (out / "1").is_dir() and (out / "2").is_dir(), "both tasks", 60)
    except AssertionError:
        logs = cluster.cli("service", "logs", "shop_app", check=False, timeout=20)
        spec = cluster.cli("service", "inspect", "shop_app", check=False).stdout
        found = sorted(str(p) for p in out.rglob("*"))
        raise AssertionError(f"output: {logs.stdout} {logs.stderr}\n{spec}\n{found}") from None
    for slot in ("1", "2"):
        facts = out / slot
        env = dict(line.split("=", 1) for line in (facts / "env").read_text().splitlines())
        assert env["GREETING"] == "hello from env_file"  # quotes stripped, as compose does
        assert env["FLAG"] == "true"  # environment over env_file; a YAML boolean as text
        assert (env["SLOT"], env["SERVICE"], env["NODE"]) == (slot, "shop_app", "s1")
        assert (facts / "hostname").read_text().strip() == f"shop_app-{slot}"
        assert "10.1.2.3\tdb.example" in (facts / "hosts").read_text()
        resolv = (facts / "resolv").read_text()
        assert "nameserver 10.9.9.9" in resolv and "search corp.example" in resolv
        assert (facts / "nofile_soft").read_text().strip() == "1234"
        assert (facts / "nofile_hard").read_text().strip() == "2345"
        assert (facts / "somaxconn").read_text().strip() == "1234"
        assert (facts / "pid1").read_text().strip() == "docker-init"
        assert (facts / "config").read_text() == "listen 8080\n"
        assert (facts / "config_stat").read_text().split() == ["1000", "0", "440"]
        assert "Read-only file system" in (facts / "config_write").read_text()
        assert (facts / "secret").read_text() == "pa55word"

    # a config in use cannot be removed; inspect shows its data
    refused = cluster.cli("config", "rm", "shop_app_conf", check=False)
    assert refused.returncode == 1 and "in use by service shop_app" in refused.stderr
    pretty = cluster.cli("config", "inspect", "--pretty", "shop_app_conf").stdout
    assert "listen 8080" in pretty
    listed = json.loads(cluster.cli("config", "ls", "-o", "json").stdout)
    assert [c["spec"]["name"] for c in listed] == ["shop_app_conf"]

    removed = cluster.cli("stack", "rm", "shop", timeout=60)
    assert "Removing config shop_app_conf" in removed.stderr
    assert "Removing secret shop_db_pw" in removed.stderr
    cluster.wait_for(
        lambda: (out / "stopped-1").exists() and (out / "stopped-2").exists(),
        "both tasks stopped by SIGUSR1 (through tini)",
        60,
    )
    assert json.loads(cluster.cli("config", "ls", "-o", "json").stdout) == []


@pytest.fixture
def control(cluster: Cluster) -> Iterator[Any]:
    stub = cluster.control()
    yield stub
    stub.close()


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details() or ""


def spec_with(*refs: ConfigReference) -> ServiceSpec:
    spec = ServiceSpec(name="web")
    spec.task.container.image = "registry.invalid/busybox"  # refused before any pull
    spec.task.container.command.extend(["sleep", "3600"])
    spec.task.container.configs.extend(refs)
    spec.replicated.replicas = 1
    return spec


def test_configs_show_their_data_and_serve_services(
    cluster: Cluster, control: Any, image_registry: ImageRegistry, tmp_path: Path
) -> None:
    source = tmp_path / "nginx.conf"
    source.write_text("worker_processes 2;\n")
    config_id = cluster.cli("config", "create", "--label", "app=web", "nginx", str(source))
    assert len(config_id.stdout.strip()) == 24
    got = control.GetConfig(GetConfigRequest(config="nginx"))
    assert got.spec.data == b"worker_processes 2;\n" and got.spec.labels["app"] == "web"
    assert [c.spec.data for c in control.ListConfigs(ListConfigsRequest()).configs] == [b""]
    shown = json.loads(cluster.cli("config", "inspect", "nginx").stdout)[0]
    assert shown["spec"]["data"] == "d29ya2VyX3Byb2Nlc3NlcyAyOwo="  # base64, as docker
    again = cluster.cli("config", "create", "nginx", str(source), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr

    for bad, field in [
        (ConfigReference(config_name="nginx", target="etc/x"), "target"),
        (ConfigReference(config_name="nginx", target="/etc/../x"), "target"),
        (ConfigReference(config_name="nginx", mode=0o1777), "mode"),
        (ConfigReference(), "config_name"),
    ]:
        code, details = code_of(
            lambda bad=bad: control.CreateService(CreateServiceRequest(spec=spec_with(bad)))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(f"spec.task.container.configs[0].{field}: "), details
    code, details = code_of(
        lambda: control.CreateService(
            CreateServiceRequest(spec=spec_with(ConfigReference(config_name="nope")))
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "config 'nope' not found" in details

    image = image_registry.busybox
    cluster.cli("service", "create", "--name", "web", "--config", "nginx", image, "sleep", "1h")
    [ref] = control.GetService(GetServiceRequest(service="web")).spec.task.container.configs
    assert (ref.config_id, ref.target, ref.mode) == (got.id, "/nginx", 0o444)
    code, details = code_of(lambda: control.RemoveConfig(RemoveConfigRequest(config="nginx")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "service web" in details
    assert "--config-rm" in details

    control.RemoveService(RemoveServiceRequest(service="web"))
    cluster.wait_for(lambda: cluster.cli_ok("config", "rm", "nginx"), "removable once unused", 30)
    assert not control.ListConfigs(ListConfigsRequest()).configs


def test_bad_configs_are_refused_naming_the_field(control: Any) -> None:
    for spec, field in [
        (ConfigSpec(name="empty", data=b""), "spec.data"),
        (ConfigSpec(name="big", data=b"x" * (500 * 1024 + 1)), "spec.data"),
        (ConfigSpec(name="bad name", data=b"x"), "spec.name"),
    ]:
        code, details = code_of(
            lambda spec=spec: control.CreateConfig(CreateConfigRequest(spec=spec))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
