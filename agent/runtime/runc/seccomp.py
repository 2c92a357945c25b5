"""Dockyard's default seccomp profile, as the OCI ``linux.seccomp`` section.

Written by us and reviewed here, modeled on the intent of Docker's default profile
(moby ``profiles/seccomp/default.json``): everything not listed fails with ``EPERM``; the
common syscalls of ordinary programs are allowed; the ones that reach past the container
(kernel modules, kexec, mounts, namespaces, keyrings, bpf, perf, clock setting...) are
allowed only when the capability that the kernel would check anyway was added. See
``docs/seccomp.md`` for what is allowed and denied, why, and how we differ from Docker.

Names unknown to the host's libseccomp are skipped by runc, so the lists may name
syscalls of other architectures or newer kernels (``chown32``, ``futex_waitv``...).
Pure data and functions: no I/O.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ALLOWED",
    "CAP_RULES",
    "CLONE_NAMESPACE_FLAGS",
    "ENOSYS",
    "EPERM",
    "architectures",
    "default_profile",
]

EPERM = 1
ENOSYS = 38

# Allowed for every container, grouped by purpose (a name belongs to one group only).
ALLOWED: dict[str, tuple[str, ...]] = {
    "process lifecycle": (
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "fork",
        "vfork",
        "wait4",
        "waitid",
        "waitpid",
        "kill",
        "tkill",
        "tgkill",
        "pidfd_open",
        "pidfd_send_signal",
        "restart_syscall",
        "set_tid_address",
        "rseq",
        "getpid",
        "getppid",
        "gettid",
        "getpgid",
        "getpgrp",
        "setpgid",
        "getsid",
        "setsid",
        "prctl",
        "set_robust_list",
        "get_robust_list",
        "get_thread_area",
        "set_thread_area",
        "seccomp",
        "capget",
        "capset",
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
        "process_mrelease",
    ),
    "signals": (
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_sigtimedwait_time64",
        "rt_tgsigqueueinfo",
        "sigaltstack",
        "signalfd",
        "signalfd4",
        "sigprocmask",
        "sigreturn",
        "pause",
        "alarm",
    ),
    "identity": (
        "getuid",
        "getuid32",
        "geteuid",
        "geteuid32",
        "getgid",
        "getgid32",
        "getegid",
        "getegid32",
        "getgroups",
        "getgroups32",
        "getresuid",
        "getresuid32",
        "getresgid",
        "getresgid32",
        "setuid",
        "setuid32",
        "setgid",
        "setgid32",
        "setreuid",
        "setreuid32",
        "setregid",
        "setregid32",
        "setresuid",
        "setresuid32",
        "setresgid",
        "setresgid32",
        "setfsuid",
        "setfsuid32",
        "setfsgid",
        "setfsgid32",
        "setgroups",
        "setgroups32",
    ),
    "memory": (
        "brk",
        "mmap",
        "mmap2",
        "munmap",
        "mremap",
        "mprotect",
        "madvise",
        "mincore",
        "msync",
        "mlock",
        "mlock2",
        "mlockall",
        "munlock",
        "munlockall",
        "membarrier",
        "memfd_create",
        "memfd_secret",
        "remap_file_pages",
        "pkey_alloc",
        "pkey_free",
        "pkey_mprotect",
    ),
    "files and directories": (
        "open",
        "openat",
        "openat2",
        "creat",
        "close",
        "close_range",
        "read",
        "readv",
        "pread64",
        "preadv",
        "preadv2",
        "write",
        "writev",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "lseek",
        "_llseek",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "fcntl64",
        "flock",
        "stat",
        "stat64",
        "lstat",
        "lstat64",
        "fstat",
        "fstat64",
        "fstatat64",
        "newfstatat",
        "statx",
        "statfs",
        "statfs64",
        "fstatfs",
        "fstatfs64",
        "access",
        "faccessat",
        "faccessat2",
        "getcwd",
        "chdir",
        "fchdir",
        "mkdir",
        "mkdirat",
        "rmdir",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "unlink",
        "unlinkat",
        "symlink",
        "symlinkat",
        "readlink",
        "readlinkat",
        "getdents",
        "getdents64",
        "truncate",
        "truncate64",
        "ftruncate",
        "ftruncate64",
        "fallocate",
        "fadvise64",
        "fadvise64_64",
        "readahead",
        "fsync",
        "fdatasync",
        "sync",
        "syncfs",
        "sync_file_range",
        "copy_file_range",
        "sendfile",
        "sendfile64",
        "splice",
        "tee",
        "vmsplice",
        "umask",
        "utime",
        "utimes",
        "utimensat",
        "utimensat_time64",
        "futimesat",
        "mknod",
        "mknodat",
        "name_to_handle_at",
        "ioctl",
    ),
    "ownership, modes and xattrs": (
        "chmod",
        "fchmod",
        "fchmodat",
        "chown",
        "chown32",
        "fchown",
        "fchown32",
        "fchownat",
        "lchown",
        "lchown32",
        "getxattr",
        "lgetxattr",
        "fgetxattr",
        "setxattr",
        "lsetxattr",
        "fsetxattr",
        "listxattr",
        "llistxattr",
        "flistxattr",
        "removexattr",
        "lremovexattr",
        "fremovexattr",
    ),
    "event loops and async i/o": (
        "select",
        "_newselect",
        "pselect6",
        "pselect6_time64",
        "poll",
        "ppoll",
        "ppoll_time64",
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_wait",
        "epoll_wait_old",
        "epoll_pwait",
        "epoll_pwait2",
        "eventfd",
        "eventfd2",
        "inotify_init",
        "inotify_init1",
        "inotify_add_watch",
        "inotify_rm_watch",
        "fanotify_mark",
        "io_setup",
        "io_destroy",
        "io_submit",
        "io_cancel",
        "io_getevents",
        "io_pgetevents",
        "io_pgetevents_time64",
        "pipe",
        "pipe2",
    ),
    "threads and synchronisation": (
        "futex",
        "futex_time64",
        "futex_waitv",
        "sched_yield",
        "sched_getaffinity",
        "sched_setaffinity",
        "sched_getattr",
        "sched_setattr",
        "sched_getparam",
        "sched_setparam",
        "sched_getscheduler",
        "sched_setscheduler",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_rr_get_interval",
        "sched_rr_get_interval_time64",
        "getpriority",
        "setpriority",
        "ioprio_get",
        "ioprio_set",
        "getcpu",
    ),
    "time and timers (reading the clock, not setting it)": (
        "time",
        "gettimeofday",
        "clock_gettime",
        "clock_gettime64",
        "clock_getres",
        "clock_getres_time64",
        "clock_nanosleep",
        "clock_nanosleep_time64",
        "nanosleep",
        "getitimer",
        "setitimer",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_gettime64",
        "timer_settime",
        "timer_settime64",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_gettime64",
        "timerfd_settime",
        "timerfd_settime64",
        "times",
        "adjtimex",
        "clock_adjtime",
        "clock_adjtime64",
    ),
    "networking (socket() itself has an argument rule below)": (
        "socketpair",
        "socketcall",
        "bind",
        "listen",
        "accept",
        "accept4",
        "connect",
        "getsockname",
        "getpeername",
        "getsockopt",
        "setsockopt",
        "shutdown",
        "send",
        "sendto",
        "sendmsg",
        "sendmmsg",
        "recv",
        "recvfrom",
        "recvmsg",
        "recvmmsg",
        "recvmmsg_time64",
    ),
    "system v and posix ipc": (
        "ipc",
        "msgget",
        "msgctl",
        "msgsnd",
        "msgrcv",
        "semget",
        "semctl",
        "semop",
        "semtimedop",
        "semtimedop_time64",
        "shmget",
        "shmctl",
        "shmat",
        "shmdt",
        "mq_open",
        "mq_unlink",
        "mq_notify",
        "mq_getsetattr",
        "mq_timedsend",
        "mq_timedsend_time64",
        "mq_timedreceive",
        "mq_timedreceive_time64",
    ),
    "resource limits and system information": (
        "getrlimit",
        "ugetrlimit",
        "setrlimit",
        "prlimit64",
        "getrusage",
        "sysinfo",
        "uname",
        "getrandom",
    ),
}

# Allowed only when the container holds the capability (the kernel checks it as well;
# the filter keeps the attack surface closed for containers that do not need it).
CAP_RULES: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "mount",
        "umount",
        "umount2",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "sethostname",
        "setdomainname",
        "quotactl",
        "quotactl_fd",
        "fanotify_init",
        "lookup_dcookie",
        "syslog",
        "bpf",
        "perf_event_open",
    ),
    "CAP_SYS_PTRACE": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "process_madvise",
        "kcmp",
        "pidfd_getfd",
    ),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}

# Never allowed by this profile, whatever the capabilities (use seccomp="unconfined"):
# kexec_load, kexec_file_load, pivot_root, swapon, swapoff, keyctl, add_key,
# request_key, userfaultfd, io_uring_setup/enter/register, nfsservctl, uselib, ustat,
# sysfs, _sysctl, vm86, vm86old, create_module, get_kernel_syms, query_module.

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
# CLONE_NEWPID | CLONE_NEWNET: clone() is allowed only with none of these set.
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

AF_VSOCK = 40

# personality(2) values programs use legitimately: PER_LINUX, UNAME26,
# ADDR_NO_RANDOMIZE, both, and 0xffffffff (query the current persona).
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

_ARCHES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

# Architecture-specific helpers (modify_ldt is x86's LDT call; arm's cache/TLS calls).
_ARCH_SYSCALLS: dict[str, tuple[str, ...]] = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
}


def architectures(machine: str | None = None, x32: bool = True) -> list[str]:
    """The seccomp architectures for ``machine`` (default: this host), native first.

    ``x32=False`` (a kernel without the x32 ABI, see ``files.kernel_runs_x32``) leaves
    x32 out: the kernel refuses those syscalls anyway, the filter then kills the thread
    that tries one, and libseccomp builds the filter in every ``runc init`` in two
    thirds of the time (about 8 of 35 ms of a start's CPU here).
    """
    machine = (machine or platform.machine()).lower()
    machine = _ARCH_ALIASES.get(machine, machine)
    if machine not in _ARCHES:
        raise ValueError(f"no default seccomp profile for architecture {machine!r}")
    return [a for a in _ARCHES[machine] if x32 or a != "SCMP_ARCH_X32"]


def _norm_caps(caps: Iterable[str]) -> set[str]:
    return {c.upper() if c.upper().startswith("CAP_") else f"CAP_{c.upper()}" for c in caps}


def default_profile(
    caps: Sequence[str], machine: str | None = None, x32: bool = True
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a container holding ``caps`` (``x32``: see
    ``architectures``).

    Capability-conditional rules are resolved here, against the container's final
    capability set (after ``cap_add`` / ``cap_drop``), as Docker does.
    """
    held = _norm_caps(caps)
    machine = _ARCH_ALIASES.get(
        (machine or platform.machine()).lower(), (machine or platform.machine()).lower()
    )
    allowed: list[str] = [name for group in ALLOWED.values() for name in group]
    allowed += _ARCH_SYSCALLS.get(machine, ())
    for cap, names in CAP_RULES.items():
        if cap in held:
            allowed += names
    allowed = sorted(set(allowed))
    rules: list[dict[str, Any]] = [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    rules.append(
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
        }
    )
    for persona in PERSONALITIES:
        rules.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}],
            }
        )
    if "CAP_SYS_ADMIN" not in held:
        # Threads and fork() via clone(), but no new namespaces.
        rules.append(
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
        )
        # clone3 passes its flags in a struct the filter cannot read: answer ENOSYS so
        # libc falls back to clone(), which the rule above checks.
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(machine, x32),
        "syscalls": rules,
    }
