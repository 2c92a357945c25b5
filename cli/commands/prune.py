"""`dockyard container|image|volume prune`, `system prune` and `system df`, on one agent.

Pruning is made of the agent's own list and remove calls: what is listed as unused is
removed one by one, without force, so anything that came into use meanwhile (a
container started, an image a new container runs) is refused by the agent and kept.
`--filter until=TIME` keeps what was created after TIME; `label=K[=V]` keeps what lacks
the label. A prompt asks first unless -f is given.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from dockyard.cli.client import CliError, Target, call
from dockyard.cli.filters import Filters
from dockyard.cli.options import GlobalOptions, output_option, pass_options
from dockyard.cli.render import emit_data, emit_table

AGENT = "agent"
STOPPED = ("created", "exited", "dead")
CONTAINER_PRUNE_FILTERS = ("until", "label")
IMAGE_PRUNE_FILTERS = ("until",)
VOLUME_PRUNE_FILTERS = ("until", "label")


@dataclass
class Pruned:
    """What one prune removed, and the bytes it gave back (when known)."""

    removed: list[str] = field(default_factory=list)
    reclaimed: int = 0
    kept: list[str] = field(default_factory=list)
    """Listed as unused, but the agent refused (it came into use): `name: reason`."""


def _until(wanted: Filters) -> float | None:
    from dockyard.cli.humanize import parse_since

    values = wanted.get("until")
    if not values:
        return None
    try:
        return min(parse_since(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--filter until") from None


def _older(stamp: Any, until: float | None) -> bool:
    from dockyard.common.timestamps import to_seconds

    return until is None or to_seconds(stamp) < until


def _confirm(what: str, force: bool) -> None:
    if not force and not click.confirm(
        f"WARNING! This will remove {what}.\nAre you sure you want to continue?", default=False
    ):
        raise click.Abort()


def _remove_each(names: Sequence[str], remove: Callable[[str], Any], result: Pruned) -> None:
    import grpc

    from dockyard.cli.client import rpc_code

    for name in names:
        try:
            remove(name)
            result.removed.append(name)
        except CliError as exc:
            if rpc_code(exc) not in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ):
                raise
            result.kept.append(f"{name}: {exc.message}")


def prune_containers(target: Target, wanted: Filters) -> Pruned:
    from dockyard.cli.commands.container_run import containers_stub
    from dockyard.v1.containers_pb2 import ListContainersRequest, RemoveContainerRequest

    until = _until(wanted)
    records = call(
        target, containers_stub, "List", ListContainersRequest(all=True), what=AGENT
    ).containers
    doomed = [
        r.id
        for r in records
        if r.state.status in STOPPED
        and _older(r.created_at, until)
        and wanted.labels(r.config.labels)
    ]
    result = Pruned()
    _remove_each(
        doomed,
        lambda ref: call(
            target,
            containers_stub,
            "Remove",
            RemoveContainerRequest(container=ref),
            what=AGENT,
            timeout=60,
        ),
        result,
    )
    return result


def prune_images(target: Target, wanted: Filters, every: bool) -> Pruned:
    """Dangling images (untagged), or with `every` all that no container uses."""
    from dockyard.cli.commands.container_run import containers_stub
    from dockyard.cli.commands.images import images_stub
    from dockyard.v1.containers_pb2 import ListContainersRequest
    from dockyard.v1.images_pb2 import ListImagesRequest, RemoveImageRequest

    until = _until(wanted)
    rows = call(target, images_stub, "List", ListImagesRequest(), what=AGENT).images
    containers = call(
        target, containers_stub, "List", ListContainersRequest(all=True), what=AGENT
    ).containers
    used = {c.image_digest for c in containers} | {c.image for c in containers}
    in_use = {row.id for row in rows if {row.id, row.digest, f"{row.repository}:{row.tag}"} & used}
    names, sizes = [], {}
    for row in rows:
        if not _older(row.created, until) or (row.repository and not every) or row.id in in_use:
            continue
        name = f"{row.repository}:{row.tag}" if row.repository else row.id
        names.append(name)
        sizes[name] = (row.id, row.size)
    result = Pruned()
    freed: dict[str, int] = {}

    def remove(name: str) -> None:
        answer = call(
            target, images_stub, "Remove", RemoveImageRequest(image=name), what=AGENT, timeout=60
        )
        image_id, size = sizes[name]
        if image_id in answer.deleted or any(d.endswith(image_id) for d in answer.deleted):
            freed[image_id] = size

    _remove_each(names, remove, result)
    result.reclaimed = sum(freed.values())
    return result


def prune_volumes(target: Target, wanted: Filters) -> Pruned:
    from dockyard.cli.commands.volumes import volumes_stub
    from dockyard.v1.containers_pb2 import ListVolumesRequest, RemoveVolumeRequest

    until = _until(wanted)
    records = call(target, volumes_stub, "List", ListVolumesRequest(), what=AGENT).volumes
    doomed = [
        r.name
        for r in records
        if not r.used_by and _older(r.created_at, until) and wanted.labels(r.labels)
    ]
    result = Pruned()
    _remove_each(
        doomed,
        lambda name: call(
            target, volumes_stub, "Remove", RemoveVolumeRequest(name=name), what=AGENT
        ),
        result,
    )
    return result


def _report(kind: str, result: Pruned, show_space: bool = False) -> None:
    from dockyard.cli.humanize import human_size

    if result.removed:
        click.echo(f"Deleted {kind}:")
        for name in result.removed:
            click.echo(name)
        click.echo()
    for line in result.kept:
        click.echo(f"dockyard: kept {line}", err=True)
    if show_space:
        click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")


def _prune_options(keys: Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")(
            command
        )
        return click.option(
            "--filter",
            "filters",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Only prune matching items; keys: {', '.join(keys)} "
            "(until=TIME: created before it).",
        )(command)

    return decorate


@click.command("prune")
@_prune_options(CONTAINER_PRUNE_FILTERS)
@pass_options
def container_prune(options: GlobalOptions, filters: tuple[str, ...], force: bool) -> None:
    """Remove all stopped containers."""
    wanted = Filters(filters, CONTAINER_PRUNE_FILTERS)
    _until(wanted)
    _confirm("all stopped containers", force)
    _report("Containers", prune_containers(options.target(), wanted))


@click.command("prune")
@click.option(
    "-a",
    "--all",
    "every",
    is_flag=True,
    help="Remove every image no container uses, not only dangling ones.",
)
@_prune_options(IMAGE_PRUNE_FILTERS)
@pass_options
def image_prune(options: GlobalOptions, every: bool, filters: tuple[str, ...], force: bool) -> None:
    """Remove dangling (untagged) images; with -a, every image no container uses."""
    wanted = Filters(filters, IMAGE_PRUNE_FILTERS)
    _until(wanted)
    _confirm(
        "all images without at least one container associated to them"
        if every
        else "all dangling images",
        force,
    )
    _report("Images", prune_images(options.target(), wanted, every), show_space=True)


@click.command("prune")
@_prune_options(VOLUME_PRUNE_FILTERS)
@pass_options
def volume_prune(options: GlobalOptions, filters: tuple[str, ...], force: bool) -> None:
    """Remove all volumes no container uses."""
    wanted = Filters(filters, VOLUME_PRUNE_FILTERS)
    _until(wanted)
    _confirm("all local volumes not used by at least one container", force)
    _report("Volumes", prune_volumes(options.target(), wanted))


@click.group("system")
def system() -> None:
    """Disk usage and cleanup on one agent."""


@system.command("prune")
@click.option(
    "-a", "--all", "every", is_flag=True, help="Remove every unused image, not only dangling ones."
)
@click.option("--volumes", is_flag=True, help="Prune unused volumes too.")
@_prune_options(("until", "label"))
@pass_options
def system_prune(
    options: GlobalOptions, every: bool, volumes: bool, filters: tuple[str, ...], force: bool
) -> None:
    """Remove stopped containers, dangling images (all unused with -a) and, with
    --volumes, unused volumes."""
    wanted = Filters(filters, ("until", "label"))
    _until(wanted)
    parts = ["all stopped containers"]
    if volumes:
        parts.append("all volumes not used by at least one container")
    parts.append(
        "all images without at least one container associated to them"
        if every
        else "all dangling images"
    )
    _confirm(",\n  - ".join(["", *parts]).lstrip(","), force)
    target = options.target()
    _report("Containers", prune_containers(target, wanted))
    if volumes:
        _report("Volumes", prune_volumes(target, wanted))
    images = Filters(
        [f for f in filters if f.partition("=")[0].strip() == "until"], IMAGE_PRUNE_FILTERS
    )  # images carry no labels here
    _report("Images", prune_images(target, images, every), show_space=True)


@system.command("df")
@output_option
@pass_options
def disk_usage(options: GlobalOptions) -> None:
    """Show what the agent's images, containers and volumes hold (sizes where the agent
    reports them: images)."""
    from dockyard.cli.commands.container_run import containers_stub
    from dockyard.cli.commands.images import images_stub
    from dockyard.cli.commands.volumes import volumes_stub
    from dockyard.cli.humanize import human_size
    from dockyard.v1.containers_pb2 import ListContainersRequest, ListVolumesRequest
    from dockyard.v1.images_pb2 import ListImagesRequest

    target = options.target()
    images = {
        i.id: i for i in call(target, images_stub, "List", ListImagesRequest(), what=AGENT).images
    }
    containers = list(
        call(
            target, containers_stub, "List", ListContainersRequest(all=True), what=AGENT
        ).containers
    )
    volumes = list(call(target, volumes_stub, "List", ListVolumesRequest(), what=AGENT).volumes)
    used_digests = {c.image_digest for c in containers} | {c.image for c in containers}
    active_images = {
        i
        for i, row in images.items()
        if row.digest in used_digests
        or i in used_digests
        or f"{row.repository}:{row.tag}" in used_digests
    }
    image_size = sum(row.size for row in images.values())
    reclaimable = sum(row.size for i, row in images.items() if i not in active_images)
    running = sum(1 for c in containers if c.state.status == "running")
    rows = [
        {
            "type": "Images",
            "total": len(images),
            "active": len(active_images),
            "size": image_size,
            "reclaimable": reclaimable,
        },
        {
            "type": "Containers",
            "total": len(containers),
            "active": running,
            "size": None,
            "reclaimable": None,
        },
        {
            "type": "Local Volumes",
            "total": len(volumes),
            "active": sum(1 for v in volumes if v.used_by),
            "size": None,
            "reclaimable": None,
        },
    ]
    if options.output != "table":
        emit_data(rows, options.output)
        return
    percent = f" ({100 * reclaimable // image_size}%)" if image_size else ""
    emit_table(
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        [
            [
                "Images",
                len(images),
                len(active_images),
                human_size(image_size),
                human_size(reclaimable) + percent,
            ],
            ["Containers", len(containers), running, "N/A", "N/A"],
            ["Local Volumes", len(volumes), rows[2]["active"], "N/A", "N/A"],
        ],
    )
    sys.stdout.flush()
