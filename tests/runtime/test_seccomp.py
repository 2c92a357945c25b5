"""The default seccomp profile: its JSON shape, and its effect on real runc containers."""

from __future__ import annotations

import gzip
import json
import platform
from pathlib import Path
from typing import Any

import pytest

from dockyard.agent.runtime.base import ContainerSpec, InvalidConfig
from dockyard.agent.runtime.runc.files import host_devices, kernel_runs_x32
from dockyard.agent.runtime.runc.seccomp import CLONE_NAMESPACE_FLAGS, default_profile
from dockyard.agent.runtime.runc.spec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    EtcFiles,
    ResolvedUser,
    bounding_capabilities,
    build_spec,
)

ETC = EtcFiles(Path("/e/hosts"), Path("/e/resolv.conf"), Path("/e/hostname"))


def _config(**kwargs: Any) -> ContainerSpec:
    return ContainerSpec(
        id="c1", name="c1", image="img", lower_dirs=[Path("/l")], command=["sh"], **kwargs
    )


def _spec(**kwargs: Any) -> dict[str, Any]:
    return build_spec(_config(**kwargs), Path("/rootfs"), ResolvedUser(0, 0), ETC, "/cg/c1")


def _unconditional(seccomp: dict[str, Any]) -> set[str]:
    """Names allowed by a rule without argument conditions."""
    return {
        name
        for rule in seccomp["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


# --- spec shape (no runc needed) ---


def test_default_spec_has_the_profile() -> None:
    spec = _spec()
    seccomp = spec["linux"]["seccomp"]
    json.dumps(seccomp)  # JSON-ready
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert seccomp["defaultErrnoRet"] == 1
    assert seccomp["architectures"][0] in ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")
    allowed = _unconditional(seccomp)
    assert {"read", "write", "execve", "openat", "futex", "exit_group"} <= allowed
    denied = {
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "mount",
        "umount2",
        "pivot_root",
        "reboot",
        "swapon",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "ptrace",
        "userfaultfd",
        "open_by_handle_at",
        "clock_settime",
        "settimeofday",
        "unshare",
        "setns",
        "clone",
        "clone3",
    }
    assert not denied & allowed
    assert spec["linux"]["maskedPaths"] and spec["linux"]["readonlyPaths"]


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    rules = [r for r in default_profile(DEFAULT_CAPABILITIES)["syscalls"] if "clone" in r["names"]]
    assert rules == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ],
        }
    ]
    clone3 = [
        r for r in default_profile(DEFAULT_CAPABILITIES)["syscalls"] if "clone3" in r["names"]
    ]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]


def test_architectures() -> None:
    assert default_profile([], "x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
    ]
    assert default_profile([], "arm64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "modify_ldt" not in _unconditional(default_profile([], "aarch64"))
    with pytest.raises(ValueError, match="riscv64"):
        default_profile([], "riscv64")


def test_x32_left_out_where_the_kernel_does_not_run_it() -> None:
    """x32 costs libseccomp a third of the filter's build in every ``runc init``; a kernel
    without the x32 ABI refuses those syscalls whatever the filter says."""
    assert default_profile([], "x86_64", x32=False)["architectures"] == [
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
    ]
    assert default_profile([], "arm64", x32=False)["architectures"] == [
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
    ]
    spec = build_spec(_config(), Path("/rootfs"), ResolvedUser(0, 0), ETC, "/cg/c1", x32=False)
    assert "SCMP_ARCH_X32" not in spec["linux"]["seccomp"]["architectures"]
    assert "SCMP_ARCH_X32" in _spec()["linux"]["seccomp"]["architectures"] or (
        platform.machine() != "x86_64"
    )


def _kernel_config_x32() -> bool | None:
    """CONFIG_X86_X32_ABI from /proc/config.gz, None when the kernel does not publish it."""
    path = Path("/proc/config.gz")
    if not path.exists():
        return None
    return "CONFIG_X86_X32_ABI=y" in gzip.decompress(path.read_bytes()).decode()


def test_the_x32_probe_matches_the_kernel() -> None:
    built_in = _kernel_config_x32()
    if built_in is None or platform.machine() != "x86_64":
        pytest.skip("no /proc/config.gz on an x86_64 host to compare with")
    if built_in:
        pytest.skip("x32 built in: on or off at boot (syscall.x32), either answer is right")
    assert kernel_runs_x32() is False


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("SYS_ADMIN", {"mount", "umount2", "unshare", "setns", "clone", "clone3"}),
        ("SYS_PTRACE", {"ptrace", "process_vm_readv", "process_vm_writev"}),
        ("SYS_TIME", {"clock_settime", "settimeofday"}),
        ("SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
    ],
)
def test_capability_conditional_rules(cap: str, names: set[str]) -> None:
    assert not names & _unconditional(_spec()["linux"]["seccomp"])
    allowed = _unconditional(_spec(cap_add=[cap])["linux"]["seccomp"])
    assert names <= allowed
    assert "kexec_load" not in allowed


def test_cap_drop_removes_conditional_rules() -> None:
    assert "chroot" in _unconditional(_spec()["linux"]["seccomp"])
    assert "chroot" not in _unconditional(_spec(cap_drop=["SYS_CHROOT"])["linux"]["seccomp"])


def test_unconfined_and_privileged() -> None:
    spec = _spec(seccomp="unconfined", cap_add=["SYS_ADMIN"])
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["maskedPaths"]
    assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
    spec = _spec(privileged=True)
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert spec["process"]["capabilities"]["bounding"] == list(bounding_capabilities())
    assert set(bounding_capabilities()) <= set(ALL_CAPABILITIES)
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sys_mount["options"]


def test_config_fields_round_trip_and_old_records() -> None:
    config = _config(seccomp="unconfined", privileged=True)
    data = json.loads(json.dumps(config.to_dict()))
    assert ContainerSpec.from_dict(data).to_dict() == config.to_dict()
    old = _config().to_dict()
    del old["seccomp"], old["privileged"]
    restored = ContainerSpec.from_dict(old)
    assert (restored.seccomp, restored.privileged) == ("default", False)
    with pytest.raises(InvalidConfig, match="seccomp mode"):
        _config(seccomp="bogus")


# --- real containers ---


async def _run(e: Any, script: str, **kwargs: object) -> tuple[int, bytes]:
    rt = e.runtime
    info = await rt.create(e.config("sh", "-c", script, **kwargs))
    await rt.start(info.id)
    exit_info = await rt.wait(info.id)
    out = b"".join([r.data async for r in rt.logs(info.id)])
    return exit_info.exit_code, out


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_default_profile_runs_ordinary_commands(env: Any) -> None:
    script = (
        "ls / >/dev/null && ps >/dev/null && wget --help 2>/dev/null; date >/dev/null"
        " && sh -c 'echo sub' && (sleep 0.1 & wait) && echo ok"
    )
    code, out = await _run(env, script)
    assert (code, out) == (0, b"sub\nok\n")
    spec = json.loads(
        (env.state_root / "containers").glob("*/bundle/config.json").__next__().read_text()
    )
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    x32 = "SCMP_ARCH_X32" in spec["linux"]["seccomp"]["architectures"]
    assert x32 == (kernel_runs_x32() and platform.machine() == "x86_64")


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_default_profile_denies_namespaces_and_mounts(env: Any) -> None:
    script = "grep '^Seccomp:' /proc/self/status; unshare -m true; mount -t tmpfs none /tmp"
    code, out = await _run(env, script)
    assert code != 0
    assert out.startswith(b"Seccomp:\t2\n"), out  # filter mode
    # busybox mount reports EPERM as "permission denied (are you root?)"
    assert b"unshare(0x20000): Operation not permitted" in out, out
    assert b"mount: permission denied" in out, out
    # adding CAP_SYS_ADMIN opens the mount rules of the default profile, as in Docker
    code, out = await _run(env, "mount -t tmpfs none /tmp && echo mounted", cap_add=["SYS_ADMIN"])
    assert (code, out) == (0, b"mounted\n")


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_unconfined_with_sys_admin_can_mount(env: Any) -> None:
    code, out = await _run(
        env,
        "mount -t tmpfs none /tmp && grep -c ' /tmp tmpfs' /proc/mounts",
        seccomp="unconfined",
        cap_add=["SYS_ADMIN"],
    )
    assert (code, out) == (0, b"1\n")


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_unconfined_without_sys_admin_still_cannot_mount(env: Any) -> None:
    code, out = await _run(env, "mount -t tmpfs none /tmp", seccomp="unconfined")
    assert code != 0
    assert b"mount: permission denied" in out  # the kernel's capability check, not seccomp


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_filter_denies_what_the_kernel_would_allow(env: Any) -> None:
    """A user namespace needs no capability; only the filter stops it."""
    code, out = await _run(env, "unshare -U true")
    assert code != 0
    assert b"Operation not permitted" in out
    code, out = await _run(env, "unshare -U true && echo ok", seccomp="unconfined")
    assert (code, out) == (0, b"ok\n")


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_privileged_can_mount_and_see_devices(env: Any) -> None:
    script = (
        "mount -t tmpfs none /tmp && unshare -m true && echo ok; grep '^Seccomp:' /proc/self/status"
    )
    code, out = await _run(env, script, privileged=True)
    assert (code, out) == (0, b"ok\nSeccomp:\t0\n")
    devices = host_devices()
    if devices:
        path = devices[0]["path"]
        code, out = await _run(
            env, f"test -{devices[0]['type']} {path} && echo {path}", privileged=True
        )
        assert (code, out) == (0, f"{path}\n".encode())


@pytest.mark.runc
@pytest.mark.timeout(60)
async def test_exec_is_filtered_too(env: Any) -> None:
    info = await env.runtime.create(env.config("sleep", "30"))
    await env.runtime.start(info.id)
    session = await env.runtime.exec(info.id, ["sh", "-c", "unshare -m true; echo $?"])
    result = await session.collect()
    assert b"Operation not permitted" in result.stderr
    assert result.stdout == b"1\n"
    await env.runtime.remove(info.id, force=True)


def test_never_allowed_even_with_every_capability() -> None:
    allowed = _unconditional(default_profile(ALL_CAPABILITIES))
    assert {"mount", "ptrace", "clone", "bpf"} <= allowed
    never = {
        "kexec_load",
        "kexec_file_load",
        "pivot_root",
        "swapon",
        "swapoff",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "io_uring_setup",
    }
    assert not never & allowed
