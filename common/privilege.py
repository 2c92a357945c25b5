"""What makes a container privileged in effect: one rule for the controller's cluster
policy (`cluster update --allow-privileged`) and the agent's local API.

`--privileged` is the obvious door; these open the same one and need the same policy:

- **Capabilities beyond Docker's default set** (or `ALL`). The default set is what
  every container already has; Kubernetes' Pod Security "baseline" profile allows
  adding nothing else, and we follow it rather than keep a deny-list that a new kernel
  capability would slip past. The worst (SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE,
  BPF, PERFMON, DAC_READ_SEARCH, NET_ADMIN, SYS_BOOT, SYS_TIME, MAC_ADMIN, ...) each
  give a way out of the container or power over the whole node; the message names why.
- **A bind mount of a protected host path, of anything below one, or of any parent
  of one** (so `/`, `/var`, `/run` too): the agent's and the runtime's own state and
  sockets (whoever writes there runs containers, or reads keys and secrets), the
  Docker socket, the kernel's interfaces (`/proc`, `/sys`, `/dev`), the host's
  configuration and boot files, and the binaries host root runs. Paths are compared
  after lexical normalization (`//etc/./` is `/etc`); a bind source that reaches a
  protected path through a symlink on the node is the agent's to refuse (it alone
  can resolve the node's paths).
- **The host's network namespace** (`network: host`): the node's interfaces and
  every loopback service (the agent's API, an embedded etcd), packet capture.
- **No seccomp filter** (`seccomp=unconfined`, the agent's API only): the kernel's
  whole system-call surface, user namespaces (and the capabilities inside them)
  included.

Host PID and IPC namespaces and device nodes have no field in a service spec or a
create request: a field that adds one must be classified here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "PROTECTED_HOST_PATHS",
    "Privilege",
    "bind_privilege",
    "capability_privilege",
    "normalize_capability",
    "parse_capability",
    "privileges",
]

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
"""Docker's default capability set: every container has these."""

ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Every capability, in kernel numbering order (CAP_CHOWN is bit 0)."""

_WHY: dict[str, str] = {
    "CAP_ALL": "every capability: root on the node",
    "CAP_SYS_ADMIN": "mounts, namespaces and most of the kernel's admin interfaces: the "
    "classic way out of a container",
    "CAP_SYS_MODULE": "loads kernel modules: any code in the node's kernel",
    "CAP_SYS_RAWIO": "raw I/O ports and /dev/mem: the node's memory and hardware",
    "CAP_SYS_PTRACE": "traces and injects code into other processes",
    "CAP_SYS_BOOT": "reboots the node or loads a new kernel",
    "CAP_SYS_TIME": "sets the node's clock (certificates, leases, logs)",
    "CAP_NET_ADMIN": "reconfigures interfaces, routes and firewall rules",
    "CAP_MAC_ADMIN": "changes the node's LSM (AppArmor, SELinux) policy",
    "CAP_MAC_OVERRIDE": "bypasses the node's LSM policy",
    "CAP_DAC_READ_SEARCH": "opens host files by handle (open_by_handle_at: the 'shocker' escape)",
    "CAP_BPF": "loads BPF programs into the node's kernel",
    "CAP_PERFMON": "reads kernel and other processes' data through perf",
    "CAP_SYSLOG": "reads the kernel's log and its addresses",
    "CAP_LINUX_IMMUTABLE": "changes immutable and append-only flags on files",
    "CAP_AUDIT_CONTROL": "changes the node's audit rules",
    "CAP_SYS_RESOURCE": "overrides the node's resource limits",
}

PROTECTED_HOST_PATHS: tuple[str, ...] = (
    # the agent's, the controller's and the runtimes' own state, config and sockets
    "/var/lib/dockyard",
    "/run/dockyard",
    "/etc/dockyard",
    "/run/runc",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/run/docker.sock",
    "/run/docker",
    "/var/lib/etcd",
    "/var/lib/cni",
    "/opt/cni",
    "/run/netns",
    "/run/systemd",
    "/run/dbus",
    # the kernel's interfaces
    "/proc",
    "/sys",
    "/dev",
    # the host's configuration, boot files, home of root and what host root runs
    "/etc",
    "/boot",
    "/root",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
)
"""Host paths a container may bind only under the privileged policy (`/var/run` is
read as `/run`, as it is a link to it on every current distribution)."""


@dataclass(frozen=True)
class Privilege:
    """One thing in a container's spec that makes it privileged, and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def normalize_capability(name: str) -> str:
    """`sys_admin`, `SYS_ADMIN` and `CAP_SYS_ADMIN` are `CAP_SYS_ADMIN`."""
    cap = name.strip().upper()
    return cap if cap.startswith("CAP_") else f"CAP_{cap}"


def parse_capability(text: str) -> str:
    """A capability as given to `--cap-add`/`--cap-drop`: `net_admin`, `NET_ADMIN` or
    `CAP_NET_ADMIN` is `CAP_NET_ADMIN`; `all` is `ALL`. The one check of the CLI, the
    controller and the agent.

    Raises:
        ValueError: not a capability Linux knows (the message says so).
    """
    cap = normalize_capability(text)
    if cap == "CAP_ALL":
        return "ALL"
    if cap not in ALL_CAPABILITIES:
        raise ValueError(f"unknown capability {text[:40]!r} (e.g. NET_ADMIN or ALL)")
    return cap


def capability_privilege(name: str) -> str | None:
    """Why adding capability `name` is privileged, or None (one of the default set)."""
    cap = normalize_capability(name)
    if cap in DEFAULT_CAPABILITIES:
        return None
    why = _WHY.get(cap, "not in the default capability set")
    return f"{cap.removeprefix('CAP_')} ({why})"


def _normal(path: str) -> str:
    normal = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    normal = "/" + normal.lstrip("/")  # normpath keeps a leading "//"
    if normal == "/var/run" or normal.startswith("/var/run/"):
        normal = normal.removeprefix("/var")
    return normal


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bind_privilege(source: str, protected: Iterable[str] = ()) -> str | None:
    """Why a bind mount of host path `source` is privileged, or None.

    `protected`: more host paths to guard besides PROTECTED_HOST_PATHS (an agent's own
    state dir where it is not the default).
    """
    path = _normal(source)
    roots = (*PROTECTED_HOST_PATHS, *(_normal(p) for p in protected))
    for root in roots:
        if _within(path, root):
            return f"{path} is {'' if path == root else 'inside '}{root}, a protected host path"
    for root in roots:
        if _within(root, path):
            return f"{path} holds {root}, a protected host path"
    return None


def privileges(
    *,
    privileged: bool,
    cap_add: Sequence[str],
    binds: Sequence[tuple[str, str]],
    network: str,
    seccomp: str = "",
    prefix: str = "",
    protected: Iterable[str] = (),
) -> list[Privilege]:
    """Everything that makes this container privileged in effect, field by field.

    Args:
        privileged: the `privileged` flag.
        cap_add: capabilities added to the default set.
        binds: (field, host path) of each bind mount.
        network: the network mode (`host` is the node's own).
        seccomp: the seccomp mode (`unconfined`: no filter; the agent's API has it).
        prefix: put before each field name (`spec.task.container.`).
        protected: more host paths to guard (see `bind_privilege`).
    """
    found: list[Privilege] = []
    if privileged:
        found.append(
            Privilege(
                f"{prefix}privileged", "every capability, no seccomp filter and the node's devices"
            )
        )
    for index, cap in enumerate(cap_add):
        why = capability_privilege(cap)
        if why is not None:
            found.append(Privilege(f"{prefix}cap_add[{index}]", why))
    protected = tuple(protected)
    for field, source in binds:
        why = bind_privilege(source, protected)
        if why is not None:
            found.append(Privilege(f"{prefix}{field}", why))
    if network == "host":
        found.append(
            Privilege(
                f"{prefix}network",
                "host: the node's own network namespace (its interfaces and loopback services)",
            )
        )
    if seccomp == "unconfined":
        found.append(
            Privilege(
                f"{prefix}seccomp",
                "unconfined: every system call of the node's kernel, user namespaces included",
            )
        )
    return found
