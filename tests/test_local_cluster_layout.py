"""deploy/local_cluster_layout.py and local_cluster_hosts.py without starting anything:
the addresses of one host and of separate hosts, the --hosts options refused when bad,
and why separate hosts cannot run (then `up` keeps the one-host mode)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture
def deploy_modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    sys.path.insert(0, str(DEPLOY))
    try:
        import local_cluster_hosts  # type: ignore[import-not-found]
        import local_cluster_layout  # type: ignore[import-not-found]

        yield local_cluster_layout, local_cluster_hosts
    finally:
        sys.path.remove(str(DEPLOY))


def parse(layout_module: ModuleType, *args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    layout_module.add_up_options(parser)
    return parser.parse_args(list(args))


def test_one_host_and_separate_hosts_addresses(
    deploy_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    layouts, _ = deploy_modules
    one = layouts.Layout(tmp_path)
    assert (one.controller, one.registry, one.agent_address("node-2")) == (
        "127.0.0.1:7400",
        "127.0.0.1:5000",
        "127.0.0.1:7412",
    )
    hosts = layouts.Layout(tmp_path)
    layouts.apply_up_options(hosts, parse(layouts, "--hosts", "2", "--lan", "10.77.5.0/24"), True)
    assert hosts.hosts and hosts.nodes == 2
    assert hosts.controller_addresses() == ["10.77.5.1:7400"]
    assert hosts.registry == "10.77.5.1:5000" and hosts.join_address == "10.77.5.1:7399"
    assert hosts.agent_address("node-2") == "10.77.5.12:7412"
    assert hosts.netns("node-2") == "dy-host-2"
    layouts.write_layout(hosts)
    assert layouts.read_layout(tmp_path).agent_address("node-1") == "10.77.5.11:7411"


def test_segments_cut_the_lan_and_the_hosts_take_them_in_turn(
    deploy_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    layouts, _ = deploy_modules
    layout = layouts.Layout(tmp_path)
    args = parse(layouts, "--hosts", "3", "--segments", "2", "--lan", "10.77.5.0/24")
    layouts.apply_up_options(layout, args, True)
    assert [str(n) for n in layout.segment_networks()] == ["10.77.5.0/25", "10.77.5.128/25"]
    assert [layout.segment_of(i) for i in (1, 2, 3)] == [1, 2, 1]
    assert [layout.node_ip(i) for i in (1, 2, 3)] == ["10.77.5.11", "10.77.5.140", "10.77.5.13"]
    assert layout.machine_ip == "10.77.5.1"
    layouts.write_layout(layout)
    assert layouts.read_layout(tmp_path).segments == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--segments", "2"], "--segments needs --hosts"),
        (["--hosts", "2", "--segments", "5"], "--segments must be between 1 and 4"),
        (["--hosts", "20", "--segments", "2", "--lan", "10.77.5.0/26"], "no room for 20 hosts"),
        (["--hosts", "2", "--nodes", "3"], "give --hosts or --nodes"),
        (["--hosts", "2", "--lan", "10.210.0.0/24"], "apart from --subnet-pool"),
        (["--hosts", "2", "--lan", "10.77.5.0/28"], "at least 64 addresses"),
    ],
)
def test_bad_hosts_options_are_refused(
    deploy_modules: tuple[ModuleType, ModuleType],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    layouts, _ = deploy_modules
    with pytest.raises(ValueError, match=message):
        layouts.apply_up_options(layouts.Layout(tmp_path), parse(layouts, *args), True)


def test_a_cluster_keeps_its_mode(
    deploy_modules: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    layouts, _ = deploy_modules
    with pytest.raises(ValueError, match="--hosts: this cluster was set up on one host"):
        layouts.apply_up_options(layouts.Layout(tmp_path), parse(layouts, "--hosts", "2"), False)


def test_without_root_separate_hosts_are_unavailable(
    deploy_modules: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, hosts = deploy_modules
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 1000)
    assert hosts.unavailable() == "network namespaces need root"
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0)
    monkeypatch.setattr(hosts.shutil, "which", lambda tool: None if tool == "nsenter" else tool)
    assert hosts.unavailable() == "nsenter is not installed (iproute2, util-linux)"
