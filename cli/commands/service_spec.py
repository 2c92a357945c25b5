"""Flags and spec files to a ServiceSpec, checked before any request is sent.

One table (`SETTINGS`) names every setting once: its flag, what it accepts and
where it lands. `service create`, `service update` and `job run` build their
options from it (see `service_flags.py`), and a spec file uses the same names.

The file format is described in service_yaml.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from dockyard.cli.commands.service_extras import (
    check_extras,
    expand_env_files,
    extra_settings,
)
from dockyard.cli.commands.service_parse import (
    SpecError,
    invalid,
    parse_bytes,
    parse_choice,
    parse_command,
    parse_constraint,
    parse_count,
    parse_env,
    parse_label,
    parse_mount,
    parse_nano_cpus,
    parse_network,
    parse_ratio,
    parse_seconds,
    parse_secret,
    parse_spread,
)
from dockyard.cli.commands.service_ports import parse_publish
from dockyard.common.privilege import parse_capability

__all__ = [
    "BY_FLAG",
    "SETTINGS",
    "Setting",
    "apply_list_edits",
    "apply_settings",
    "finish_spec",
    "new_spec",
]

MIN_MEMORY_LIMIT = 4 * 1024 * 1024


# --- the settings table ------------------------------------------------------------------

# Where a setting makes sense: `create` (service create/update), `update` (update only,
# e.g. --image), `job` (job run). Task settings are in all three.
TASK = frozenset({"create", "update", "job"})
SERVICE = frozenset({"create", "update"})
CREATE_ONLY = frozenset({"create", "job"})


@dataclass(frozen=True)
class Setting:
    """One flag. Scalar settings have `apply(spec, label, text)`; list and map settings
    have `item(label, text) -> (key, value)` and `field(spec)`, the repeated field or
    map they fill (a value of None means "nothing to add")."""

    flag: str
    metavar: str
    help: str
    short: str | None = None
    where: frozenset[str] = TASK
    apply: Callable[[Any, str, str], None] | None = None
    item: Callable[[str, str], tuple[str, Any]] | None = None
    field: Callable[[Any], Any] | None = None
    is_bool: bool = False

    @property
    def is_list(self) -> bool:
        return self.item is not None

    @property
    def label(self) -> str:
        return f"-{self.short}" if self.short else f"--{self.flag}"


def _set(path: str, parse: Callable[[str, str], Any]) -> Callable[[Any, str, str], None]:
    """A setter for the field at dotted `path`, the value parsed by `parse`."""
    *parents, name = path.split(".")

    def apply(spec: Any, label: str, text: str) -> None:
        message = spec
        for part in parents:
            message = getattr(message, part)
        setattr(message, name, parse(label, text))

    return apply


def _enum(path: str, enum_name: str, choices: tuple[str, ...]) -> Callable[[Any, str, str], None]:
    def parse(label: str, text: str) -> int:
        from dockyard.v1 import workloads_pb2

        enum = getattr(workloads_pb2, enum_name.split(".", maxsplit=1)[0])
        for part in enum_name.split(".")[1:]:
            enum = getattr(enum, part)
        return int(enum.Value(parse_choice(label, text, choices).replace("-", "_").upper()))

    return _set(path, parse)


def _mode(spec: Any, label: str, text: str) -> None:
    mode = parse_choice(label, text, ("replicated", "global"))
    if mode == "global":
        getattr(spec, "global").SetInParent()
    elif spec.WhichOneof("mode") != "replicated":
        spec.replicated.replicas = 1


def _replicas(spec: Any, label: str, text: str) -> None:
    count = parse_count(label, text)
    if spec.WhichOneof("mode") not in (None, "replicated"):
        raise invalid(label, text, f"a {spec.WhichOneof('mode')} service has no replica count")
    spec.replicated.replicas = count


def _health_cmd(spec: Any, label: str, text: str) -> None:
    if not text.strip():
        raise invalid(label, text, "the health command is empty")
    spec.task.container.healthcheck.test[:] = ["CMD-SHELL", text]


def _no_health(spec: Any, label: str, text: str) -> None:
    if text == "true":
        spec.task.container.healthcheck.test[:] = ["NONE"]


def _entrypoint(spec: Any, label: str, text: str) -> None:
    spec.task.container.entrypoint[:] = parse_command(label, text)


def _workdir(label: str, text: str) -> str:
    if text and not text.startswith("/"):
        raise invalid(label, text, "the working directory must be an absolute path")
    return text


def _image(label: str, text: str) -> str:
    if not text.strip():
        raise invalid(label, text, "the image reference is empty")
    return text.strip()


def _name(label: str, text: str) -> str:
    from dockyard.common.validation import ValidationError, check_name

    try:
        return check_name(label, text)
    except ValidationError as exc:
        raise SpecError(str(exc)) from None


def _bool(label: str, text: str) -> bool:
    return text == "true"


def _env_item(label: str, text: str) -> tuple[str, Any]:
    return text.partition("=")[0], parse_env(label, text)


def _label_item(label: str, text: str) -> tuple[str, Any]:
    return parse_label(label, text)


def _constraint_item(label: str, text: str) -> tuple[str, Any]:
    value = parse_constraint(label, text)
    return value, value


def _pref_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import PlacementPreference

    descriptor = parse_spread(label, text)
    return descriptor, PlacementPreference(spread=descriptor)


def _port_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import PortConfig

    ports = parse_publish(label, text)
    if len(ports) != 1:
        raise SpecError(f"invalid {label} {text!r}: one port here, not a range")
    port = ports[0]
    config = PortConfig(
        published_port=port.published,
        target_port=port.target,
        protocol=port.protocol,
        publish_mode=port.mode,
    )
    return port.key, config


def _one_port_texts(setting: Setting, label: str, texts: Iterable[str]) -> list[str]:
    """`--publish` texts with ranges cut into one text per port (the other flags as given)."""
    if setting.flag != "publish":
        return list(texts)
    out = []
    for text in texts:
        for port in parse_publish(label, text):
            mode = f",mode={port.mode}" if port.mode else ""
            out.append(
                f"published={port.published},target={port.target},protocol={port.protocol}{mode}"
            )
    return out


def _mount_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import Mount

    found = parse_mount(label, text)
    mount = Mount(
        type=found["type"],
        source=found.get("source", ""),
        target=found["target"],
        read_only=found.get("readonly") == "true",
    )
    if "tmpfs-size" in found:
        mount.tmpfs_size_bytes = parse_bytes(label, found["tmpfs-size"])
    return mount.target, mount


def _secret_item(label: str, text: str) -> tuple[str, Any]:
    from dockyard.v1.workloads_pb2 import SecretReference

    found = parse_secret(label, text)
    return found["source"], SecretReference(
        secret_name=found["source"],
        target=found["target"],
        uid=found["uid"],
        gid=found["gid"],
        mode=found["mode"],
    )


def _network_item(label: str, text: str) -> tuple[str, Any]:
    """A cluster network's attachment; a node-local mode (none, host, bridge) travels
    as an attachment too and `finish_spec` moves it to `container.network`."""
    from dockyard.v1.networks_pb2 import NetworkAttachmentConfig

    name, aliases = parse_network(label, text)
    return name, NetworkAttachmentConfig(target=name, aliases=aliases)


def _cap_item(label: str, text: str) -> tuple[str, Any]:
    try:
        value = parse_capability(text)
    except ValueError as exc:
        raise invalid(label, text, str(exc)) from None
    return value, value


def _update_settings(prefix: str) -> list[Setting]:
    path = prefix  # spec.update / spec.rollback
    actions = ("pause", "continue", "rollback") if prefix == "update" else ("pause", "continue")
    what = "an update" if prefix == "update" else "a rollback"
    return [
        Setting(
            f"{prefix}-parallelism",
            "N",
            f"Tasks replaced at once in {what} (0: all).",
            where=SERVICE,
            apply=_set(f"{path}.parallelism", parse_count),
        ),
        Setting(
            f"{prefix}-delay",
            "DURATION",
            f"Pause between batches of {what}.",
            where=SERVICE,
            apply=_set(f"{path}.delay_seconds", parse_seconds),
        ),
        Setting(
            f"{prefix}-order",
            "stop-first|start-first",
            "Stop the old task first, or start the new one first.",
            where=SERVICE,
            apply=_enum(f"{path}.order", "UpdateConfig.Order", ("stop-first", "start-first")),
        ),
        Setting(
            f"{prefix}-failure-action",
            "|".join(actions),
            f"When {what} fails.",
            where=SERVICE,
            apply=_enum(f"{path}.failure_action", "UpdateConfig.FailureAction", actions),
        ),
        Setting(
            f"{prefix}-monitor",
            "DURATION",
            "How long a new task must stay up to count.",
            where=SERVICE,
            apply=_set(f"{path}.monitor_seconds", parse_seconds),
        ),
        Setting(
            f"{prefix}-max-failure-ratio",
            "RATIO",
            "Failures tolerated (0 to 1).",
            where=SERVICE,
            apply=_set(f"{path}.max_failure_ratio", parse_ratio),
        ),
    ]


SETTINGS: list[Setting] = [
    Setting(
        "name",
        "NAME",
        "Service name.",
        where=frozenset({"create", "job"}),
        apply=_set("name", _name),
    ),
    Setting(
        "mode",
        "replicated|global",
        "replicated: --replicas tasks; global: one per node.",
        where=frozenset({"create"}),
        apply=_mode,
    ),
    Setting("replicas", "N", "Number of tasks.", where=SERVICE, apply=_replicas),
    Setting(
        "image",
        "REF",
        "Run this image.",
        where=frozenset({"update"}),
        apply=_set("task.container.image", _image),
    ),
    Setting(
        "args",
        "COMMAND",
        "Replace the command (split like a shell).",
        where=frozenset({"update"}),
        apply=lambda spec, label, text: spec.task.container.command.__setitem__(
            slice(None), parse_command(label, text)
        ),
    ),
    Setting(
        "constraint",
        "EXPR",
        "Placement constraint, e.g. node.labels.zone==a.",
        item=_constraint_item,
        field=lambda s: s.task.placement.constraints,
    ),
    Setting(
        "placement-pref",
        "spread=node.labels.KEY",
        "Spread tasks over a node label.",
        item=_pref_item,
        field=lambda s: s.task.placement.preferences,
    ),
    Setting(
        "max-replicas-per-node",
        "N",
        "At most N tasks on one node (0: no limit).",
        apply=_set("task.placement.max_replicas_per_node", parse_count),
    ),
    Setting(
        "reserve-cpu",
        "CPUS",
        "CPUs set aside per task.",
        apply=_set("task.resources.reservations.nano_cpus", parse_nano_cpus),
    ),
    Setting(
        "reserve-memory",
        "SIZE",
        "Memory set aside per task.",
        apply=_set("task.resources.reservations.memory_bytes", parse_bytes),
    ),
    Setting(
        "limit-cpu",
        "CPUS",
        "CPU limit per task.",
        apply=_set("task.resources.limits.nano_cpus", parse_nano_cpus),
    ),
    Setting(
        "limit-memory",
        "SIZE",
        "Memory limit per task.",
        apply=_set("task.resources.limits.memory_bytes", parse_bytes),
    ),
    Setting(
        "limit-pids",
        "N",
        "Process limit per task (0: none).",
        apply=_set("task.resources.pids_limit", parse_count),
    ),
    Setting(
        "env",
        "KEY=VALUE",
        "Environment variable.",
        short="e",
        item=_env_item,
        field=lambda s: s.task.container.env,
    ),
    Setting(
        "workdir",
        "DIR",
        "Working directory.",
        short="w",
        apply=_set("task.container.workdir", _workdir),
    ),
    Setting(
        "user",
        "USER[:GROUP]",
        "User to run as.",
        short="u",
        apply=_set("task.container.user", lambda _label, text: text),
    ),
    Setting("entrypoint", "CMD", "Replace the image's entrypoint.", apply=_entrypoint),
    Setting(
        "hostname",
        "NAME",
        "Container host name.",
        apply=_set("task.container.hostname", lambda _label, text: text),
    ),
    Setting(
        "label",
        "KEY=VALUE",
        "Service label.",
        where=SERVICE | {"job"},
        item=_label_item,
        field=lambda s: s.labels,
    ),
    Setting(
        "container-label",
        "KEY=VALUE",
        "Container label.",
        item=_label_item,
        field=lambda s: s.task.container.labels,
    ),
    Setting(
        "cap-add",
        "CAP",
        "Add a capability.",
        item=_cap_item,
        where=CREATE_ONLY,
        field=lambda s: s.task.container.cap_add,
    ),
    Setting(
        "cap-drop",
        "CAP",
        "Drop a capability.",
        item=_cap_item,
        where=CREATE_ONLY,
        field=lambda s: s.task.container.cap_drop,
    ),
    Setting(
        "restart-condition",
        "any|on-failure|none",
        "When to restart a task.",
        apply=_enum(
            "task.restart_policy.condition",
            "RestartPolicy.Condition",
            ("any", "on-failure", "none"),
        ),
    ),
    Setting(
        "restart-delay",
        "DURATION",
        "Wait between restarts.",
        apply=_set("task.restart_policy.delay_seconds", parse_seconds),
    ),
    Setting(
        "restart-max-attempts",
        "N",
        "Give up after N restarts (0: never).",
        apply=_set("task.restart_policy.max_attempts", parse_count),
    ),
    Setting(
        "restart-window",
        "DURATION",
        "Window the attempts are counted in.",
        apply=_set("task.restart_policy.window_seconds", parse_seconds),
    ),
    Setting("health-cmd", "CMD", "Health check command (run by /bin/sh).", apply=_health_cmd),
    Setting(
        "health-interval",
        "DURATION",
        "Time between health checks.",
        apply=_set("task.container.healthcheck.interval_seconds", parse_seconds),
    ),
    Setting(
        "health-timeout",
        "DURATION",
        "Time one health check may take.",
        apply=_set("task.container.healthcheck.timeout_seconds", parse_seconds),
    ),
    Setting(
        "health-retries",
        "N",
        "Failures in a row that make a task unhealthy.",
        apply=_set("task.container.healthcheck.retries", parse_count),
    ),
    Setting(
        "health-start-period",
        "DURATION",
        "Grace time before failures count.",
        apply=_set("task.container.healthcheck.start_period_seconds", parse_seconds),
    ),
    Setting(
        "no-healthcheck", "", "Disable the image's health check.", is_bool=True, apply=_no_health
    ),
    Setting(
        "stop-grace-period",
        "DURATION",
        "SIGTERM, then SIGKILL after this.",
        apply=_set("task.container.stop_grace_seconds", parse_seconds),
    ),
    *_update_settings("update"),
    *_update_settings("rollback"),
    Setting(
        "publish",
        "[PUBLISHED:]TARGET[/udp]|published=P,target=T[,protocol=udp][,mode=ingress|host]",
        "Publish a port (ranges: 8080-8081:80-81); mode=ingress (the default) on every "
        "node (the routing mesh; no published port: one from 30000-32767), mode=host on "
        "the task's node.",
        short="p",
        where=SERVICE,
        item=_port_item,
        field=lambda s: s.task.ports,
    ),
    Setting(
        "network",
        "NAME|name=NAME[,alias=A]",
        "Join a cluster network (repeatable), or a node-local mode: none, host, bridge "
        "(published ports imply bridge).",
        item=_network_item,
        field=lambda s: s.task.networks,
    ),
    Setting(
        "endpoint-mode",
        "vip|dnsrr",
        "How the service's name resolves: a virtual IP (default) or the tasks' addresses.",
        where=SERVICE,
        apply=_set(
            "task.endpoint_mode",
            lambda label, text: parse_choice(label, text, ("vip", "dnsrr")),
        ),
    ),
    Setting(
        "mount",
        "type=bind|volume|tmpfs,source=SRC,target=PATH[,readonly]",
        "Mount a node's directory, a named volume of the node or a tmpfs (--mount-rm "
        "takes the target).",
        item=_mount_item,
        field=lambda s: s.task.container.mounts,
    ),
    Setting(
        "secret",
        "NAME|source=NAME[,target=FILE,uid=0,gid=0,mode=0444]",
        "Give the tasks a secret as /run/secrets/FILE (--secret-rm takes the name).",
        item=_secret_item,
        field=lambda s: s.task.container.secrets,
    ),
    Setting(
        "read-only",
        "",
        "Mount the root filesystem read-only.",
        is_bool=True,
        apply=_set("task.container.read_only", _bool),
    ),
    Setting(
        "privileged",
        "",
        "Every capability, no seccomp, the host's devices (only if "
        "the cluster's policy allows it).",
        is_bool=True,
        apply=_set("task.container.privileged", _bool),
    ),
    *extra_settings(),
]
BY_FLAG = {s.flag: s for s in SETTINGS}


# --- building specs ----------------------------------------------------------------------


def new_spec(image: str = "", command: Iterable[str] = ()) -> Any:
    from dockyard.v1.workloads_pb2 import ServiceSpec

    spec = ServiceSpec()
    spec.task.container.image = image
    spec.task.container.command.extend(command)
    return spec


def _set_list(spec: Any, setting: Setting, label: str, texts: Iterable[str]) -> None:
    assert setting.item is not None and setting.field is not None
    items = [setting.item(label, text) for text in _one_port_texts(setting, label, texts)]
    target = setting.field(spec)
    if isinstance(target, MutableMapping):
        target.clear()
        target.update({key: value for key, value in items})
    else:
        del target[:]
        target.extend(value for _, value in items if value is not None)


def apply_settings(
    spec: Any,
    values: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> Any:
    """Apply `values` (flag name -> text, list of texts for list settings, bool for
    flags) in table order; raise SpecError on the first bad one."""
    values = expand_env_files(values)
    for setting in SETTINGS:
        if setting.flag not in values:
            continue
        value = values[setting.flag]
        label = (labels or {}).get(setting.flag, setting.label)
        if setting.is_list:
            _set_list(spec, setting, label, value)
        else:
            assert setting.apply is not None
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            setting.apply(spec, label, text)
    _network_modes(spec)
    return spec


def apply_list_edits(spec: Any, flag: str, add: Iterable[str], remove: Iterable[str]) -> None:
    """`--FLAG-add` / `--FLAG-rm` of `service update`: add or replace by key, remove by key."""
    setting = BY_FLAG[flag]
    assert setting.item is not None and setting.field is not None
    target = setting.field(spec)
    add = _one_port_texts(setting, f"--{flag}-add", add)
    for text in _one_port_texts(setting, f"--{flag}-rm", remove):
        by_text = (
            "env",
            "label",
            "container-label",
            "mount",
            "secret",
            "config",
            "host",
            "ulimit",
            "sysctl",
        )
        key = text if flag in by_text else setting.item(f"--{flag}-rm", text)[0]
        if isinstance(target, MutableMapping):
            target.pop(key, None)
        else:
            kept = [v for v in target if not _removes(setting, v, key)]
            del target[:]
            target.extend(kept)
    for text in add:
        key, value = setting.item(f"--{flag}-add", text)
        if isinstance(target, MutableMapping):
            target[key] = value
            continue
        kept = [v for v in target if _key(setting, v) != key]
        del target[:]
        target.extend(kept)
        if value is not None:
            target.append(value)


def _removes(setting: Setting, stored: Any, key: str) -> bool:
    """Whether `--FLAG-rm` naming `key` removes `stored`: a port goes by its published
    port or, as docker's `--publish-rm`, by its target (an allocated port's only name)."""
    if setting.flag == "publish" and key == f"{stored.target_port}/{stored.protocol or 'tcp'}":
        return True
    return _key(setting, stored) == key


def _key(setting: Setting, stored: Any) -> str:
    """The key of a stored repeated item, as `item` computes it for new ones."""
    if setting.flag == "env":
        return str(stored).partition("=")[0]
    if setting.flag == "placement-pref":
        return str(stored.spread)
    if setting.flag == "publish":
        return f"{stored.published_port or stored.target_port}/{stored.protocol or 'tcp'}"
    if setting.flag == "mount":
        return str(stored.target)
    if setting.flag == "secret":
        return str(stored.secret_name)
    if setting.flag == "network":
        return str(stored.target or stored.network_id)
    if setting.flag == "config":
        return str(stored.config_name)
    if setting.flag == "host":
        return str(stored).split()[-1]
    if setting.flag == "ulimit":
        return str(stored.name)
    return str(stored)


def finish_spec(spec: Any, *, job: bool = False) -> Any:
    """Checks across fields, once every setting is in: mode, image, memory."""
    if not job and spec.WhichOneof("mode") is None:
        spec.replicated.replicas = 1
    _network_modes(spec)
    if not spec.task.container.image:
        raise SpecError("an image is required")
    resources = spec.task.resources
    limit, reserve = resources.limits.memory_bytes, resources.reservations.memory_bytes
    if 0 < limit < MIN_MEMORY_LIMIT:
        raise invalid("--limit-memory", limit, "a memory limit below 4 MiB cannot run a container")
    if limit and reserve > limit:
        raise SpecError("--reserve-memory is larger than --limit-memory")
    check_extras(spec)
    return spec


def _network_modes(spec: Any) -> None:
    """`--network none|host|bridge` name a node-local mode, not a cluster network: set
    `container.network` from it (one mode at most, and not beside cluster networks)."""
    from dockyard.cli.commands.service_parse import NETWORK_MODES

    attachments = spec.task.networks
    modes = [a.target for a in attachments if a.target in NETWORK_MODES]
    if not modes:
        return
    if len(modes) > 1 or len(modes) != len(attachments):
        raise SpecError(
            f"--network {modes[0]} is a node-local mode: it cannot be combined with other networks"
        )
    spec.task.container.network = modes[0]
    del attachments[:]
