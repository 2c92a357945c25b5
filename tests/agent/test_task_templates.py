"""A task's spec to the container the agent makes: service templates and the
compose-era fields (no runtime needed)."""

from __future__ import annotations

from dockyard.agent.executors.task import task_request
from dockyard.agent.executors.templates import expander
from dockyard.v1.workloads_pb2 import Task, Ulimit


def a_task() -> Task:
    task = Task(id="f" * 24, service_id="s" * 24, service_name="shop_web", slot=2, node_id="n1id")
    container = task.spec.container
    container.image = "busybox"
    container.env.extend(["SLOT={{.Task.Slot}}", "WHO={{ .Service.Name }}@{{.Node.Hostname}}"])
    container.hostname = "{{.Service.Name}}-{{.Task.Slot}}"
    container.mounts.add(type="volume", source="data-{{.Task.Slot}}", target="/data")
    container.mounts.add(type="bind", source="/srv/{{.Node.ID}}", target="/srv")
    container.extra_hosts.append("10.0.0.5 db")
    container.dns_servers.append("1.1.1.1")
    container.init = True
    container.ulimits.append(Ulimit(name="nofile", soft=10, hard=20))
    container.sysctls["net.core.somaxconn"] = "512"
    container.stop_signal = "SIGUSR1"
    container.log_max_size_bytes, container.log_max_files = 1 << 20, 2
    return task


def test_templates_take_the_tasks_facts() -> None:
    expand = expander(a_task(), "node-a")
    assert expand("{{.Task.Name}} {{.Task.ID}}") == f"shop_web.2.{'f' * 12} {'f' * 24}"
    assert expand("{{.Service.ID}} {{.Node.ID}}") == f"{'s' * 24} n1id"
    assert expand("{{.Unknown.Thing}} and {{.Task.Slot}}") == "{{.Unknown.Thing}} and 2"
    global_task = a_task()
    global_task.slot = 0
    assert expander(global_task, "x")("{{.Task.Slot}}") == "n1id"


def test_the_container_gets_every_field() -> None:
    spec = task_request(a_task(), node_hostname="node-a").spec
    assert list(spec.env) == ["SLOT=2", "WHO=shop_web@node-a"]
    assert spec.hostname == "shop_web-2"
    assert [(v.volume, v.container) for v in spec.volumes] == [("data-2", "/data"), ("", "/srv")]
    assert str(spec.volumes[1].host) == "/srv/n1id"
    assert (list(spec.extra_hosts), list(spec.dns_servers), spec.init) == (
        ["10.0.0.5 db"],
        ["1.1.1.1"],
        True,
    )
    assert (list(spec.ulimits), dict(spec.sysctls)) == (
        [("nofile", 10, 20)],
        {"net.core.somaxconn": "512"},
    )
    assert (spec.stop_signal, spec.log_max_size, spec.log_max_files) == ("SIGUSR1", 1 << 20, 2)
    assert type(spec).from_dict(spec.to_dict()).to_dict() == spec.to_dict()  # a record survives
