"""`dockyard image pull|push|ls|inspect|rm|tag|load|save|import`, against one agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from dockyard.cli.batch import each_ref
from dockyard.cli.client import CliError, Target, call, stream
from dockyard.cli.commands.prune import image_prune
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options
from dockyard.cli.render import emit_table

if TYPE_CHECKING:
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import Listing

AGENT = "agent"


def images_stub(channel: Any) -> Any:
    from dockyard.v1 import images_pb2_grpc

    return images_pb2_grpc.ImagesStub(channel)


def pull_image(target: Target, ref: str, out: TextIO) -> Any:
    """Pull with progress on `out`; print the digest; return the ImageRecord."""
    from dockyard.cli.progress import follow_progress
    from dockyard.v1.images_pb2 import PullImageRequest

    events = stream(target, images_stub, "Pull", PullImageRequest(image=ref), what=AGENT)
    image = follow_progress(events, out)
    if image is None:
        raise CliError(f"pull of {ref} ended without an image")
    click.echo(f"Digest: {image.digest}", file=out)
    return image


@click.group("image")
def image() -> None:
    """Manage images on one agent (pull, push, ls, rm, ...)."""


image.add_command(image_prune)


@image.command("pull")
@click.option(
    "--all-nodes",
    is_flag=True,
    help="Pull on every READY node of the cluster (the target is a controller).",
)
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(min=1, max=86400),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="With several nodes or targets: give up on one after this long.",
)
@click.argument("ref", metavar="REF")
@pass_options
def pull(options: GlobalOptions, all_nodes: bool, timeout: float, ref: str) -> None:
    """Pull an image from its registry, with a progress bar per layer; with several
    agents (-H twice, contexts) or --all-nodes, on each at once: one row per target."""
    if not all_nodes and not options.many:
        image_record = pull_image(options.target(), ref, sys.stdout)
        click.echo(image_record.references[0] if image_record.references else ref)
        return
    import io

    from dockyard.cli.fanout import run_each
    from dockyard.cli.listing import finish

    targets = node_targets(options.target()) if all_nodes else options.targets()
    if not targets:
        raise CliError("no READY node to pull on")
    outcomes = run_each(
        targets, lambda target: pull_image(target, ref, io.StringIO()), timeout, options.concurrency
    )
    rows = [
        [o.target.label, o.value.references[0] if o.value.references else ref, o.value.digest]
        for o in outcomes
        if o.value is not None
    ]
    if rows:
        emit_table(["TARGET", "IMAGE", "DIGEST"], rows)
    finish(outcomes)


def node_targets(controller: Target) -> list[Target]:
    """Each READY node's agent API, as a target named after the node; over TLS its
    certificate must be that node's (the controller chose its ID)."""
    from dockyard.v1 import control_pb2_grpc
    from dockyard.v1.control_pb2 import ListNodesRequest
    from dockyard.v1.types_pb2 import NodeStatus

    nodes = call(controller, control_pb2_grpc.ControlStub, "ListNodes", ListNodesRequest()).nodes
    return [
        Target(n.description.api_address, n.spec.name, controller.tls, server_name=n.id)
        for n in sorted(nodes, key=lambda n: n.spec.name)
        if n.status.state == NodeStatus.READY and n.description.api_address
    ]


@image.command("push")
@click.argument("ref", metavar="REF")
@pass_options
def push(options: GlobalOptions, ref: str) -> None:
    """Push an image to its registry."""
    from dockyard.cli.progress import follow_progress
    from dockyard.v1.images_pb2 import PushImageRequest

    target = options.target()
    events = stream(target, images_stub, "Push", PushImageRequest(image=ref), what=AGENT)
    image_record = follow_progress(events, sys.stdout)
    if image_record is None:
        raise CliError(f"push of {ref} ended without an image")
    click.echo(f"{ref}: digest: {image_record.digest} size: {image_record.size}")


IMAGE_FILTERS = ("dangling", "reference")


@image.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only matching images: dangling=true|false, reference=PATTERN.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten image IDs.")
@format_option
@output_option
@pass_options
def list_images(
    options: GlobalOptions, filters: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List the agent's images."""
    from dockyard.cli.filters import Filters
    from dockyard.cli.listing import show_listing

    wanted = Filters(filters, IMAGE_FILTERS)
    wanted.flag("dangling")  # a bad value is refused before any daemon is asked
    show_listing(options, lambda target: image_listing(target, wanted, no_trunc), quiet)


IMAGE_HEADERS = ["REPOSITORY", "TAG", "IMAGE ID", "DIGEST", "CREATED", "SIZE"]


IMAGE_FIELDS = ["Repository", "Tag", "ID", "Digest", "CreatedSince", "Size"]


def image_listing(target: Target, wanted: Filters, no_trunc: bool = False) -> Listing:
    """`docker images` of one agent; -q prints each image ID once. Dangling: no tag."""
    from dockyard.cli.humanize import created_ago, human_size, short_id
    from dockyard.cli.listing import Listing
    from dockyard.v1.images_pb2 import ListImagesRequest

    dangling = wanted.flag("dangling")
    images = [
        i
        for i in call(target, images_stub, "List", ListImagesRequest(), what=AGENT).images
        if (dangling is None or dangling == (not i.repository))
        and wanted.glob("reference", f"{i.repository}:{i.tag}", i.repository)
    ]
    images.sort(key=lambda i: (-i.created.seconds, i.repository, i.tag))

    def ident(image_id: str) -> str:
        return image_id if no_trunc else short_id(image_id)

    rows = [
        [
            i.repository or "<none>",
            i.tag or "<none>",
            ident(i.id),
            i.digest or "<none>",
            created_ago(i.created) or "N/A",
            human_size(i.size),
        ]
        for i in images
    ]
    ids = list(dict.fromkeys(ident(i.id) for i in images))
    return Listing(IMAGE_HEADERS, rows, images, ids, IMAGE_FIELDS)


@image.command("inspect")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@output_option
@pass_options
def inspect_images(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Show whole image records (JSON by default)."""
    from dockyard.cli.listing import show_records
    from dockyard.v1.images_pb2 import ImageRef

    show_records(
        options,
        refs,
        lambda target, ref: call(target, images_stub, "Inspect", ImageRef(image=ref), what=AGENT),
    )


@image.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove even while containers use it.")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@pass_options
def remove_images(options: GlobalOptions, force: bool, refs: tuple[str, ...]) -> None:
    """Untag images and delete those no tag or container holds."""
    from dockyard.v1.images_pb2 import RemoveImageRequest

    target = options.target()

    def remove(ref: str) -> None:
        result = call(
            target, images_stub, "Remove", RemoveImageRequest(image=ref, force=force), what=AGENT
        )
        for name in result.untagged:
            click.echo(f"Untagged: {name}")
        for digest in result.deleted:
            click.echo(f"Deleted: {digest}")

    if each_ref(refs, remove)[1]:
        sys.exit(1)


@image.command("tag")
@click.argument("source", metavar="SOURCE")
@click.argument("target_ref", metavar="TARGET")
@pass_options
def tag(options: GlobalOptions, source: str, target_ref: str) -> None:
    """Give an image another reference."""
    from dockyard.v1.images_pb2 import TagImageRequest

    call(
        options.target(),
        images_stub,
        "Tag",
        TagImageRequest(source=source, target=target_ref),
        what=AGENT,
    )


def _local_path(text: str) -> str:
    """The agent reads and writes paths on its own host: send them absolute."""
    return str(Path(text).expanduser().absolute())


@image.command("load")
@click.option(
    "-i",
    "--input",
    "path",
    required=True,
    metavar="FILE",
    help="Tarball (docker save or OCI layout) on the agent's host.",
)
@pass_options
def load(options: GlobalOptions, path: str) -> None:
    """Load images from a tarball."""
    from dockyard.v1.images_pb2 import LoadImagesRequest

    result = call(
        options.target(),
        images_stub,
        "Load",
        LoadImagesRequest(path=_local_path(path)),
        what=AGENT,
        timeout=600,
    )
    for record in result.images:
        for ref in record.references or [record.id]:
            click.echo(f"Loaded image: {ref}")


@image.command("save")
@click.option(
    "-o",
    "--output",
    "path",
    required=True,
    metavar="FILE",
    help="Tarball to write, on the agent's host.",
)
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@pass_options
def save(options: GlobalOptions, path: str, refs: tuple[str, ...]) -> None:
    """Save images to a tarball (docker save and OCI layout in one)."""
    from dockyard.v1.images_pb2 import SaveImagesRequest

    call(
        options.target(),
        images_stub,
        "Save",
        SaveImagesRequest(images=list(refs), path=_local_path(path)),
        what=AGENT,
        timeout=600,
    )


@image.command("import")
@click.argument("path", metavar="ROOTFS.tar")
@click.argument("ref", metavar="REF")
@pass_options
def import_image(options: GlobalOptions, path: str, ref: str) -> None:
    """Make a one-layer image from a root filesystem tarball."""
    from dockyard.v1.images_pb2 import ImportImageRequest

    record = call(
        options.target(),
        images_stub,
        "Import",
        ImportImageRequest(path=_local_path(path), reference=ref),
        what=AGENT,
        timeout=600,
    )
    click.echo(record.id)
