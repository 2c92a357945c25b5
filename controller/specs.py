"""Checks on a ServiceSpec before anything is written: every error names its field.

Bounds keep one request from asking for something absurd (a billion replicas,
a megabyte of environment) and from filling etcd.
"""

from __future__ import annotations

import ipaddress
import math
import re

from dockyard.common.privilege import parse_capability
from dockyard.common.reference import InvalidReference, parse_reference
from dockyard.common.validation import (
    MAX_MOUNTS,
    MAX_TMPFS_BYTES,
    SYSCTL_KEY_PATTERN,
    ULIMIT_NAMES,
    VOLUME_NAME_PATTERN,
    ValidationError,
    check_labels,
    check_name,
)
from dockyard.v1.workloads_pb2 import (
    ConfigReference,
    ContainerSpec,
    HealthCheck,
    Mount,
    Placement,
    ResourceRequirements,
    RestartPolicy,
    SecretReference,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
)

MAX_REPLICAS = 100_000
MAX_ARGS = 1_000
MAX_ARG_BYTES = 32 * 1024
MAX_ENV = 1_000
MAX_SECONDS = 7 * 24 * 3600.0
MAX_CONSTRAINTS = 64
MAX_PORTS = 256
MAX_CAPS = 64
MAX_STRING = 4096  # workdir, user, hostname, a capability, a constraint, a preference
# A stored service holds its spec and the previous one; this keeps it far below
# etcd's request limit (1.5 MiB), whatever the per-field bounds add up to.
MAX_SPEC_BYTES = 256 * 1024


def check_service_spec(spec: ServiceSpec) -> None:
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        raise ValidationError("spec", f"is {size} bytes, at most {MAX_SPEC_BYTES} are allowed")
    check_name("spec.name", spec.name)
    check_labels("spec.labels", dict(spec.labels))
    _check_mode(spec)
    _check_task(spec.task)
    _check_update("spec.update", spec.update)
    _check_update("spec.rollback", spec.rollback)


def _check_mode(spec: ServiceSpec) -> None:
    mode = spec.WhichOneof("mode")
    if mode is None:
        raise ValidationError("spec.mode", "choose replicated, global or job")
    if mode == "replicated":
        _check_count("spec.replicated.replicas", spec.replicated.replicas, 0)
    elif mode == "job":
        job = spec.job
        _check_count("spec.job.completions", job.completions, 1)
        _check_count("spec.job.parallelism", job.parallelism, 0)
        if not 0 <= job.backoff_limit <= 1_000:
            raise ValidationError("spec.job.backoff_limit", "must be between 0 and 1000")


def _check_count(field: str, value: int, minimum: int) -> None:
    if not minimum <= value <= MAX_REPLICAS:
        raise ValidationError(field, f"must be between {minimum} and {MAX_REPLICAS}, got {value}")


def _check_task(task: TaskSpec) -> None:
    container = task.container
    if not container.image:
        raise ValidationError("spec.task.container.image", "an image is required")
    try:
        parse_reference(container.image)
    except InvalidReference as exc:
        raise ValidationError("spec.task.container.image", str(exc)) from exc
    _check_args("spec.task.container.command", list(container.command))
    _check_args("spec.task.container.entrypoint", list(container.entrypoint))
    _check_env(list(container.env))
    check_labels("spec.task.container.labels", dict(container.labels))
    for name in ("workdir", "user", "hostname"):
        _check_string(f"spec.task.container.{name}", getattr(container, name))
    for name in ("cap_add", "cap_drop"):
        caps = getattr(container, name)
        if len(caps) > MAX_CAPS:
            raise ValidationError(f"spec.task.container.{name}", f"at most {MAX_CAPS} entries")
        for index, cap in enumerate(caps):
            _check_string(f"spec.task.container.{name}", cap)
            try:
                parse_capability(cap)
            except ValueError as exc:
                raise ValidationError(f"spec.task.container.{name}[{index}]", str(exc)) from None
    if container.network not in ("", "none", "host", "bridge"):
        raise ValidationError("spec.task.container.network", "must be none, host or bridge")
    _check_mounts(list(container.mounts))
    _check_secrets(list(container.secrets))
    _check_configs(list(container.configs))
    _check_extras(container)
    _check_seconds("spec.task.container.stop_grace_seconds", container.stop_grace_seconds)
    _check_health(container.healthcheck)
    _check_resources(task.resources)
    _check_placement(task.placement)
    _check_restart(task.restart_policy)
    _check_ports(task)


def _check_mounts(mounts: list[Mount]) -> None:
    """Docker's --mount: bind (an absolute source on the node) or tmpfs, absolute targets,
    one mount per target."""
    if len(mounts) > MAX_MOUNTS:
        raise ValidationError("spec.task.container.mounts", f"at most {MAX_MOUNTS} mounts")
    targets: set[str] = set()
    for index, mount in enumerate(mounts):
        field = f"spec.task.container.mounts[{index}]"
        if mount.type not in ("bind", "volume", "tmpfs"):
            raise ValidationError(
                f"{field}.type", f"must be bind, volume or tmpfs, got {mount.type[:40]!r}"
            )
        for name in ("source", "target"):
            _check_string(f"{field}.{name}", getattr(mount, name))
            if "\x00" in getattr(mount, name):
                raise ValidationError(f"{field}.{name}", "contains a NUL character")
        if not mount.target.startswith("/"):
            raise ValidationError(
                f"{field}.target", f"must be an absolute path, got {mount.target[:200]!r}"
            )
        if mount.type == "bind" and not mount.source.startswith("/"):
            raise ValidationError(
                f"{field}.source",
                f"a bind source must be an absolute path on the node, got {mount.source[:200]!r}",
            )
        if mount.type == "volume" and not VOLUME_NAME_PATTERN.match(untemplated(mount.source)):
            raise ValidationError(
                f"{field}.source",
                f"not a volume name: {mount.source[:80]!r} "
                "(1-64 of [a-zA-Z0-9_.-], starting with a "
                "letter or digit)",
            )
        if mount.type == "tmpfs" and (mount.source or mount.read_only):
            raise ValidationError(f"{field}.source", "a tmpfs has no source and is writable")
        if not 0 <= mount.tmpfs_size_bytes <= MAX_TMPFS_BYTES or (
            mount.type != "tmpfs" and mount.tmpfs_size_bytes
        ):
            raise ValidationError(f"{field}.tmpfs_size_bytes", "a tmpfs size, 0 to 1 TiB")
        target = mount.target.rstrip("/") or "/"
        if target in targets:
            raise ValidationError(f"{field}.target", f"another mount is at {mount.target!r}")
        targets.add(target)


MAX_SECRETS = 64
SECRET_ID = re.compile(r"[0-9a-f]{1,64}\Z")
SECRET_TARGET = re.compile(r"[a-zA-Z0-9_.-]{1,255}\Z")


def _check_secrets(refs: list[SecretReference]) -> None:
    """Each secret once, at its own file name under /run/secrets."""
    if len(refs) > MAX_SECRETS:
        raise ValidationError("spec.task.container.secrets", f"at most {MAX_SECRETS} secrets")
    targets: set[str] = set()
    ids: set[str] = set()
    for index, ref in enumerate(refs):
        field = f"spec.task.container.secrets[{index}]"
        if ref.secret_name:
            check_name(f"{field}.secret_name", ref.secret_name)
        elif not ref.secret_id:
            raise ValidationError(f"{field}.secret_name", "name a secret")
        if ref.secret_id and not SECRET_ID.match(ref.secret_id):
            raise ValidationError(f"{field}.secret_id", "not a secret ID")
        target = ref.target or ref.secret_name
        if target and (not SECRET_TARGET.match(target) or target in (".", "..")):
            raise ValidationError(
                f"{field}.target",
                f"not a file name: {target[:80]!r} (1-255 of [a-zA-Z0-9_.-], put in /run/secrets)",
            )
        if target in targets:
            raise ValidationError(f"{field}.target", f"another secret is at {target!r}")
        targets.add(target)
        key = ref.secret_name or ref.secret_id
        if key in ids:
            raise ValidationError(f"{field}.secret_name", f"secret {key!r} is given twice")
        ids.add(key)
        if ref.mode > 0o777:
            raise ValidationError(f"{field}.mode", f"must be at most 0777, got {ref.mode:o}")


# Swarm's service templates ({{.Task.Slot}}, ...), expanded by the agent that runs a task.
_TEMPLATE = re.compile(r"\{\{\s*\.(Service|Task|Node)\.(Name|ID|Slot|Hostname)\s*\}\}")


def untemplated(text: str) -> str:
    """The text with every service template as a plain word, to check its shape."""
    return _TEMPLATE.sub("x", text)


MAX_EXTRA_ITEMS = 64
_HOSTS_LINE = re.compile(r"[0-9a-fA-F:.]+( [a-zA-Z0-9][a-zA-Z0-9._-]{0,252})+\Z")
_DOMAIN = re.compile(r"(\.|[a-zA-Z0-9][a-zA-Z0-9._-]{0,252})\Z")
_SIGNAL = re.compile(r"(SIG[A-Z0-9]{2,10}(\+[0-9]{1,2})?|[0-9]{1,2})\Z")


def _check_extras(container: ContainerSpec) -> None:
    """/etc/hosts lines, DNS, ulimits, sysctls, the stop signal, log rotation: bounded
    and in the shapes the agent writes into the container's files and OCI spec."""
    where = "spec.task.container"
    lists = {
        "extra_hosts": (container.extra_hosts, _HOSTS_LINE),
        "dns_search": (container.dns_search, _DOMAIN),
    }
    for name, (values, pattern) in lists.items():
        if len(values) > MAX_EXTRA_ITEMS:
            raise ValidationError(f"{where}.{name}", f"at most {MAX_EXTRA_ITEMS} entries")
        for index, value in enumerate(values):
            if not pattern.match(value):
                raise ValidationError(f"{where}.{name}[{index}]", f"not valid: {value[:80]!r}")
    if len(container.dns_servers) > MAX_EXTRA_ITEMS:
        raise ValidationError(f"{where}.dns_servers", f"at most {MAX_EXTRA_ITEMS} entries")
    for index, server in enumerate(container.dns_servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ValidationError(
                f"{where}.dns_servers[{index}]", f"not an IP address: {server[:80]!r}"
            ) from None
    if len(container.ulimits) > len(ULIMIT_NAMES):
        raise ValidationError(f"{where}.ulimits", "one entry per resource")
    for index, ulimit in enumerate(container.ulimits):
        if ulimit.name not in ULIMIT_NAMES or ulimit.soft < -1 or ulimit.hard < -1:
            raise ValidationError(
                f"{where}.ulimits[{index}]", f"not a ulimit: {ulimit.name[:40]!r}"
            )
        if ulimit.hard != -1 and (ulimit.soft == -1 or ulimit.soft > ulimit.hard):
            raise ValidationError(f"{where}.ulimits[{index}]", "soft above hard")
    if len(container.sysctls) > MAX_EXTRA_ITEMS:
        raise ValidationError(f"{where}.sysctls", f"at most {MAX_EXTRA_ITEMS} entries")
    for key, value in container.sysctls.items():
        if not SYSCTL_KEY_PATTERN.match(key) or len(value) > 256 or "\n" in value:
            raise ValidationError(f"{where}.sysctls", f"not a namespaced sysctl: {key[:80]!r}")
    if container.stop_signal and not _SIGNAL.match(container.stop_signal):
        raise ValidationError(
            f"{where}.stop_signal", f"not a signal: {container.stop_signal[:40]!r}"
        )
    if container.log_max_size_bytes < 0 or container.log_max_files < 0:
        raise ValidationError(f"{where}.log_max_size_bytes", "must not be negative")


def _check_configs(refs: list[ConfigReference]) -> None:
    """Each config once, at its own absolute path (empty: /<name>)."""
    if len(refs) > MAX_SECRETS:
        raise ValidationError("spec.task.container.configs", f"at most {MAX_SECRETS} configs")
    targets: set[str] = set()
    keys: set[str] = set()
    for index, ref in enumerate(refs):
        field = f"spec.task.container.configs[{index}]"
        if ref.config_name:
            check_name(f"{field}.config_name", ref.config_name)
        elif not ref.config_id:
            raise ValidationError(f"{field}.config_name", "name a config")
        if ref.config_id and not SECRET_ID.match(ref.config_id):
            raise ValidationError(f"{field}.config_id", "not a config ID")
        target = ref.target or f"/{ref.config_name}"
        parts = target.split("/")
        if (
            not target.startswith("/")
            or len(target) > 4096
            or "\x00" in target
            or any(p in (".", "..") for p in parts)
            or target.endswith("/")
        ):
            raise ValidationError(f"{field}.target", f"not an absolute file path: {target[:200]!r}")
        if target in targets:
            raise ValidationError(f"{field}.target", f"another config is at {target!r}")
        targets.add(target)
        key = ref.config_name or ref.config_id
        if key in keys:
            raise ValidationError(f"{field}.config_name", f"config {key!r} is given twice")
        keys.add(key)
        if ref.mode > 0o777:
            raise ValidationError(f"{field}.mode", f"must be at most 0777, got {ref.mode:o}")


def _check_string(field: str, value: str) -> None:
    if len(value) > MAX_STRING:
        raise ValidationError(field, f"longer than {MAX_STRING} characters")
    if "\0" in value:
        raise ValidationError(field, "contains a NUL character")


def _check_args(field: str, args: list[str]) -> None:
    if len(args) > MAX_ARGS:
        raise ValidationError(field, f"at most {MAX_ARGS} arguments")
    if any(len(arg.encode()) > MAX_ARG_BYTES for arg in args):
        raise ValidationError(field, f"an argument is longer than {MAX_ARG_BYTES} bytes")
    if any("\0" in arg for arg in args):  # execve cannot pass it
        raise ValidationError(field, "an argument contains a NUL character")


def _check_env(env: list[str]) -> None:
    field = "spec.task.container.env"
    if len(env) > MAX_ENV:
        raise ValidationError(field, f"at most {MAX_ENV} variables")
    for entry in env:
        key, has_value, _ = entry.partition("=")
        if not key or not has_value:
            raise ValidationError(field, f"{entry!r} is not KEY=VALUE")
        if len(entry.encode()) > MAX_ARG_BYTES:
            raise ValidationError(field, f"variable {key!r} is longer than {MAX_ARG_BYTES} bytes")
        if "\0" in entry:
            raise ValidationError(field, f"variable {key!r} contains a NUL character")


def _check_seconds(field: str, value: float) -> None:
    if math.isnan(value) or not 0 <= value <= MAX_SECONDS:
        raise ValidationError(field, f"must be a duration between 0 and 7 days, got {value:g} s")


def _check_health(health: HealthCheck) -> None:
    field = "spec.task.container.healthcheck"
    if not health.test:
        return
    if health.test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise ValidationError(f"{field}.test", "must start with CMD, CMD-SHELL or NONE")
    if health.test[0] != "NONE" and len(health.test) < 2:
        raise ValidationError(f"{field}.test", "needs a command after CMD or CMD-SHELL")
    _check_args(f"{field}.test", list(health.test))
    for name in ("interval_seconds", "timeout_seconds", "start_period_seconds"):
        _check_seconds(f"{field}.{name}", getattr(health, name))
    if not 0 <= health.retries <= 100:
        raise ValidationError(f"{field}.retries", "must be between 0 and 100")


def _check_resources(resources: ResourceRequirements) -> None:
    for part in ("reservations", "limits"):
        values = getattr(resources, part)
        if values.nano_cpus < 0:
            raise ValidationError(f"spec.task.resources.{part}.nano_cpus", "must not be negative")
        if values.memory_bytes < 0:
            raise ValidationError(
                f"spec.task.resources.{part}.memory_bytes", "must not be negative"
            )
    limits, reservations = resources.limits, resources.reservations
    if limits.memory_bytes and reservations.memory_bytes > limits.memory_bytes:
        raise ValidationError(
            "spec.task.resources.reservations.memory_bytes", "is larger than the memory limit"
        )
    if limits.memory_bytes and limits.memory_bytes < 4 * 1024 * 1024:
        raise ValidationError(
            "spec.task.resources.limits.memory_bytes",
            "a memory limit below 4 MiB cannot run a container",
        )
    if resources.pids_limit < 0:
        raise ValidationError("spec.task.resources.pids_limit", "must not be negative")


def _check_placement(placement: Placement) -> None:
    from dockyard.controller.scheduler.constraints import ConstraintError, check_placement

    if len(placement.constraints) > MAX_CONSTRAINTS:
        raise ValidationError(
            "spec.task.placement.constraints", f"at most {MAX_CONSTRAINTS} constraints"
        )
    for constraint in placement.constraints:
        _check_string("spec.task.placement.constraints", constraint)
    if len(placement.preferences) > MAX_CONSTRAINTS:
        raise ValidationError(
            "spec.task.placement.preferences", f"at most {MAX_CONSTRAINTS} preferences"
        )
    for preference in placement.preferences:
        _check_string("spec.task.placement.preferences.spread", preference.spread)
    if placement.max_replicas_per_node < 0:
        raise ValidationError("spec.task.placement.max_replicas_per_node", "must not be negative")
    try:
        check_placement(placement)
    except ConstraintError as exc:
        raise ValidationError("spec.task.placement", str(exc)) from exc


def _check_restart(policy: RestartPolicy) -> None:
    field = "spec.task.restart_policy"
    if policy.condition not in RestartPolicy.Condition.values():
        raise ValidationError(f"{field}.condition", f"unknown condition {policy.condition}")
    _check_seconds(f"{field}.delay_seconds", policy.delay_seconds)
    _check_seconds(f"{field}.window_seconds", policy.window_seconds)
    if policy.max_attempts < 0:
        raise ValidationError(f"{field}.max_attempts", "must not be negative")


def _check_ports(task: TaskSpec) -> None:
    if len(task.ports) > MAX_PORTS:
        raise ValidationError("spec.task.ports", f"at most {MAX_PORTS} ports")
    seen: set[tuple[int, str]] = set()
    for port in task.ports:
        for name in ("target_port", "published_port"):
            value = getattr(port, name)
            if not 0 < value < 65536 and not (name == "published_port" and value == 0):
                raise ValidationError(f"spec.task.ports.{name}", f"{value} is not in 1-65535")
        if port.protocol not in ("", "tcp", "udp"):
            raise ValidationError("spec.task.ports.protocol", "must be tcp or udp")
        if port.publish_mode not in ("", "host", "ingress"):
            raise ValidationError("spec.task.ports.publish_mode", "must be ingress or host")
        key = (port.published_port, port.protocol or "tcp")
        if port.published_port and key in seen:
            raise ValidationError("spec.task.ports", f"port {port.published_port} published twice")
        seen.add(key)


def _check_update(field: str, update: UpdateConfig) -> None:
    if update.parallelism < 0 or update.parallelism > MAX_REPLICAS:
        raise ValidationError(f"{field}.parallelism", f"must be between 0 and {MAX_REPLICAS}")
    _check_seconds(f"{field}.delay_seconds", update.delay_seconds)
    _check_seconds(f"{field}.monitor_seconds", update.monitor_seconds)
    if not 0 <= update.max_failure_ratio <= 1 or math.isnan(update.max_failure_ratio):
        raise ValidationError(f"{field}.max_failure_ratio", "must be between 0 and 1")
    if update.order not in UpdateConfig.Order.values():
        raise ValidationError(f"{field}.order", "must be stop-first or start-first")
    if update.failure_action not in UpdateConfig.FailureAction.values():
        raise ValidationError(f"{field}.failure_action", "must be pause, continue or rollback")
