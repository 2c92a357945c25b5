"""`dockyard job run|ls|ps|rm`: services in job mode, whose tasks run to completion."""

from __future__ import annotations

import secrets
import sys
from typing import Any

import click

from dockyard.cli.client import call
from dockyard.cli.commands.service_flags import (
    resolve_mode,
    resolve_option,
    setting_options,
    setting_values,
)
from dockyard.cli.commands.service_parse import parse_count, parse_seconds
from dockyard.cli.commands.service_spec import apply_settings, finish_spec, new_spec
from dockyard.cli.commands.service_wait import control_stub, wait_for_job
from dockyard.cli.options import GlobalOptions, format_option, output_option, pass_options

__all__ = ["job", "job_summary"]


@click.group("job")
def job() -> None:
    """Run commands to completion across the cluster."""


def job_summary(service: Any) -> str:
    """'web: 3 succeeded, 1 failed (of 3 completions)'."""
    status = service.job_status
    return (
        f"{service.spec.name}: {status.succeeded} succeeded, {status.failed} failed "
        f"(of {service.spec.job.completions} completions)"
    )


def build_job_spec(
    image: str,
    command: tuple[str, ...],
    completions: str,
    parallelism: str,
    backoff_limit: str,
    values: dict[str, Any],
) -> Any:
    spec = new_spec(image, command)
    spec.job.completions = parse_count("--completions", completions, 1)
    spec.job.parallelism = parse_count("--parallelism", parallelism)
    spec.job.backoff_limit = parse_count("--backoff-limit", backoff_limit)
    apply_settings(spec, values)
    if not spec.name:
        spec.name = f"job-{secrets.token_hex(3)}"
    return finish_spec(spec, job=True)


@job.command("run", context_settings={"allow_interspersed_args": False})
@click.option(
    "--completions", default="1", show_default=True, metavar="N", help="Tasks that must succeed."
)
@click.option(
    "--parallelism", default="1", show_default=True, metavar="N", help="Tasks running at once."
)
@click.option(
    "--backoff-limit",
    default="6",
    show_default=True,
    metavar="N",
    help="Failures after which the job gives up.",
)
@click.option("-d", "--detach", is_flag=True, help="Print the job ID and return at once.")
@click.option(
    "--timeout",
    default="0",
    show_default=True,
    metavar="DURATION",
    help="Stop waiting after this long (0: no limit).",
)
@resolve_option
@setting_options("job")
@click.argument("image", metavar="IMAGE")
@click.argument("command_args", nargs=-1, type=click.UNPROCESSED, metavar="[CMD]...")
@pass_options
def run(
    options: GlobalOptions,
    /,
    completions: str,
    parallelism: str,
    backoff_limit: str,
    detach: bool,
    timeout: str,
    resolve_image: str | None,
    image: str,
    command_args: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Run a job; wait for it and exit 0 if every completion succeeded, 1 otherwise."""
    spec = build_job_spec(
        image, command_args, completions, parallelism, backoff_limit, setting_values(kwargs)
    )
    wait = parse_seconds("--timeout", timeout) or None
    from dockyard.v1.control_pb2 import CreateServiceRequest

    target = options.target()
    request = CreateServiceRequest(spec=spec, resolve_image=resolve_mode(resolve_image))
    record = call(target, control_stub, "CreateService", request)
    if detach:
        click.echo(record.id)
        return
    final = wait_for_job(target, record.id, sys.stderr, wait)
    click.echo(job_summary(final), err=True)
    click.echo(record.id)
    if final.job_status.succeeded < final.spec.job.completions:
        sys.exit(1)


@job.command("ls")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only matching jobs; keys: id, name, label.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only print job IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten IDs and image digests.")
@format_option
@output_option
@pass_options
def list_jobs(
    options: GlobalOptions, filters: tuple[str, ...], quiet: bool, no_trunc: bool
) -> None:
    """List jobs: succeeded/completions and whether they are complete."""
    from dockyard.cli.commands.services import list_summaries

    list_summaries(options, "job", quiet, filters=filters, no_trunc=no_trunc)


@job.command("ps")
@click.option("--no-trunc", is_flag=True, help="Do not shorten IDs and errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only print task IDs.")
@click.argument("refs", nargs=-1, required=True, metavar="JOB...")
@output_option
@pass_options
def job_ps(options: GlobalOptions, no_trunc: bool, quiet: bool, refs: tuple[str, ...]) -> None:
    """List the tasks of jobs, finished attempts included."""
    from dockyard.cli.commands.tasks import list_tasks

    list_tasks(options, refs, True, no_trunc, quiet)


@job.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="JOB...")
@pass_options
def remove_jobs(options: GlobalOptions, refs: tuple[str, ...]) -> None:
    """Remove jobs and their tasks."""
    from dockyard.cli.commands.services import remove_services

    remove_services(options.target(), refs)
