"""The service flags beyond the first table (service_extras.py): each lands in its proto
field, bad values name the flag, `service update` edits the lists by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.cli.commands.service_parse import SpecError
from dockyard.cli.commands.service_spec import (
    apply_list_edits,
    apply_settings,
    finish_spec,
    new_spec,
)


def test_every_flag_lands_in_its_field(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nA=1\nB='kept quotes'\n")
    spec = apply_settings(
        new_spec("busybox"),
        {
            "env-file": [str(env_file)],
            "env": ["B=flag"],
            "config": ["nginx", "source=app,target=etc/app.conf,uid=1,gid=2,mode=0440"],
            "host": ["db.example:10.0.0.5", "v6=::1"],
            "dns": ["1.1.1.1"],
            "dns-search": ["corp.example"],
            "init": True,
            "tty": True,
            "ulimit": ["nofile=1024:2048", "core=-1"],
            "sysctl": ["net.core.somaxconn=1024"],
            "stop-signal": "usr1",
            "log-opt": "max-size=10m,max-file=3",
        },
    )
    finish_spec(spec)
    container = spec.task.container
    assert list(container.env) == ["A=1", "B='kept quotes'", "B=flag"]
    assert [(c.config_name, c.target, c.uid, c.gid, c.mode) for c in container.configs] == [
        ("nginx", "/nginx", 0, 0, 0o444),
        ("app", "/etc/app.conf", 1, 2, 0o440),
    ]
    assert list(container.extra_hosts) == ["10.0.0.5 db.example", "::1 v6"]
    assert (list(container.dns_servers), list(container.dns_search)) == (
        ["1.1.1.1"],
        ["corp.example"],
    )
    assert container.init and container.tty
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [
        ("nofile", 1024, 2048),
        ("core", -1, -1),
    ]
    assert dict(container.sysctls) == {"net.core.somaxconn": "1024"}
    assert container.stop_signal == "SIGUSR1"
    assert (container.log_max_size_bytes, container.log_max_files) == (10 << 20, 3)

    apply_list_edits(spec, "config", ["source=nginx2,target=/etc/nginx.conf"], ["nginx"])
    apply_list_edits(spec, "host", ["db.example:10.0.0.6"], ["v6"])
    apply_list_edits(spec, "ulimit", ["nofile=10"], ["core"])
    assert [c.config_name for c in container.configs] == ["app", "nginx2"]
    assert list(container.extra_hosts) == ["10.0.0.6 db.example"]
    assert [(u.name, u.soft, u.hard) for u in container.ulimits] == [("nofile", 10, 10)]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("host", ["db"], "invalid --host 'db': use NAME:IP"),
        ("host", ["db:not-an-ip"], "with an IP address"),
        ("dns", ["8.8.8"], "invalid --dns '8.8.8': not an IP address"),
        ("ulimit", ["files=10"], "invalid --ulimit 'files=10'"),
        ("ulimit", ["nofile=20:10"], "soft limit must not exceed"),
        ("sysctl", ["vm.swappiness=1"], "namespaced key"),
        ("stop-signal", "SIGNOPE", "not a signal name"),
        ("config", ["source=a,target=/x/../y"], "absolute file path"),
        ("log-opt", "max-files=3", "use max-size=SIZE,max-file=N"),
        ("env-file", ["/nonexistent/app.env"], "cannot read env file"),
    ],
)
def test_bad_values_name_the_flag(flag: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        apply_settings(new_spec("busybox"), {flag: value})


def test_tty_from_the_command_line_and_compose() -> None:
    """`service create -t`, `service update --no-tty`, compose `tty: true`; the task's
    container gets the terminal (the agent's ContainerSpec.tty)."""
    from click.testing import CliRunner

    from dockyard.agent.executors.task import task_request
    from dockyard.cli.commands.compose_service import service_values
    from dockyard.cli.commands.service_flags import PREFIX, setting_options
    from dockyard.v1.workloads_pb2 import Task

    seen: dict[str, object] = {}

    def command(where: str) -> object:
        import click

        @click.command()
        @setting_options(where)
        def run(**values: object) -> None:
            seen.update(values)

        return run

    runner = CliRunner()
    assert runner.invoke(command("create"), ["-t"]).exit_code == 0  # type: ignore[arg-type]
    assert seen[PREFIX + "tty"] is True
    assert runner.invoke(command("update"), ["--no-tty"]).exit_code == 0  # type: ignore[arg-type]
    assert seen[PREFIX + "tty"] is False
    assert runner.invoke(command("update"), ["-t"]).exit_code == 0  # type: ignore[arg-type]
    assert seen[PREFIX + "tty"] is True
    values, _ = service_values("services.app", {"image": "busybox", "tty": True}, {}, {})
    spec = finish_spec(apply_settings(new_spec("busybox"), values))
    assert spec.task.container.tty
    task = Task(id="t1", service_id="s1", service_name="app", slot=1)
    task.spec.CopyFrom(spec.task)
    assert task_request(task).spec.tty
    assert not apply_settings(new_spec("busybox"), {"tty": False}).task.container.tty
