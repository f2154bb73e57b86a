"""``oada-jobs jobs``: list, show, post, retry, cancel and purge jobs of a service;
pause and resume its job types.

Owns this command group: its options, checks and output. Reading the job
lists is :mod:`oada_jobs.cli._job_lists`; posting a job and reporting its
outcome, :mod:`oada_jobs.cli._job_posting`. May use the framework and
``cli/_common``; nothing but the ``cli`` package may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any

import typer
from rich.table import Table

from ..control import control_path, set_paused
from ..exceptions import InvalidJob, NotFound, OADAError, OADAJobsError
from ..job import Job, JobOptions, request_cancel
from ..requester import latest_progress
from ..retention import purge
from ..tree import resource_path
from ._common import (
    CLIError,
    DomainOption,
    ExitCode,
    JsonOption,
    LayoutOption,
    ServiceOption,
    TokenOption,
    command,
    connect,
    err_console,
    job_id_of,
    out_console,
    print_json,
    read_json_argument,
    resolve_layout,
    resolve_service,
    run_command,
    settings_from,
)
from ._job_lists import JobLists, read_job_lists, status_text
from ._job_posting import post_and_report, print_next_steps, public_fields

__all__ = ["jobs_app"]

jobs_app = typer.Typer(
    name="jobs",
    help="List, show, post, retry, cancel and purge the jobs of a service; pause and resume types.",
    no_args_is_help=True,
)

WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait until the (new) job finished and print it.")
]
WaitTimeoutOption = Annotated[
    float, typer.Option(min=0.1, help="Seconds --wait waits before giving up.")
]


@command(jobs_app, "list")
def list_jobs(
    service: ServiceOption = None,
    day: Annotated[
        str | None,
        typer.Option(help="Show finished jobs of this day (YYYY-MM-DD) instead of the latest."),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Show at most this many jobs per list (newest).")
    ] = 20,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """List a service's pending jobs and its successes and failures of the latest day."""
    settings = settings_from(domain=domain, token=token, layout=layout, service=service)
    name = resolve_service(settings, service)
    if day is not None:
        _check_day(day)

    async def main() -> None:
        async with connect(settings) as oada:
            chosen = await resolve_layout(oada, settings, name)
            lists = await read_job_lists(oada, chosen, name, day, limit)
        if json:
            print_json(_lists_json(name, chosen.name, lists), plain=True)
        else:
            _print_lists(name, chosen.name, lists)

    run_command(main)


def _check_day(day: str) -> None:
    try:
        date.fromisoformat(day)
    except ValueError:
        message = f"--day must be a date like 2026-01-31, got {day!r}"
        raise CLIError(message, ExitCode.USAGE) from None


def _lists_json(service: str, layout: str, lists: JobLists) -> dict[str, Any]:
    return {
        "service": service,
        "layout": layout,
        # One shape for every list: pending jobs belong to no day.
        "pending": {"day": None, "jobs": [row.to_json() for row in lists.pending]},
        "success": {"day": lists.success_day, "jobs": [row.to_json() for row in lists.success]},
        "failure": {"day": lists.failure_day, "jobs": [row.to_json() for row in lists.failure]},
    }


def _print_lists(service: str, layout: str, lists: JobLists) -> None:
    """One table of the three lists, then how many jobs each holds."""
    table = Table(title=f"jobs of {service} ({layout} layout)", expand=False)
    table.add_column("list", overflow="fold")
    # Keys whole on one line, so they can be copied into `jobs show`.
    table.add_column("key", no_wrap=True)
    for column in ("type", "status", "updated"):
        table.add_column(column, overflow="fold")
    for label, rows in (
        ("pending", lists.pending),
        (f"success {lists.success_day or ''}".strip(), lists.success),
        (f"failure {lists.failure_day or ''}".strip(), lists.failure),
    ):
        for row in rows:
            status = status_text(row.status) if row.problem is None else f"[red]{row.problem}"
            table.add_row(label, row.key, row.type or "", status, row.updated or "")
    if table.row_count:
        out_console.print(table)
    else:
        out_console.print(f"no jobs for service {service!r} yet")
    counts = [f"pending: {lists.pending_count}"]
    for label, day_of, rows in (
        ("success", lists.success_day, lists.success),
        ("failure", lists.failure_day, lists.failure),
    ):
        counts.append(f"{label} ({day_of}): {len(rows)}" if day_of else f"{label}: none yet")
    out_console.print("  ".join(counts))


@command(jobs_app, "show")
def show_job(
    job: Annotated[str, typer.Argument(help="The job: resources/<key> or just <key>.")],
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Print a job: its type, config, status, result, updates, who posted it and latest progress."""
    settings = settings_from(domain=domain, token=token)
    job_id = job_id_of(job)

    async def main() -> None:
        async with connect(settings) as oada:
            try:
                response = await oada.get(resource_path(job_id))
            except NotFound:
                raise CLIError(f"no job {job_id} on {oada.domain}") from None
        print_json(public_fields(response.data), plain=json)
        # --json output already carries the updates; people get the gist,
        # on stderr, so that stdout stays one JSON document either way.
        if not json and isinstance(response.data, Mapping):
            posted_by = response.data.get("createdBy")
            if isinstance(posted_by, str):
                err_console.print(f"posted by: {posted_by}", markup=False)
        progress = latest_progress(response.data) if isinstance(response.data, Mapping) else None
        if progress is not None and not json:
            text = f"progress: {progress.fraction:.0%}"
            if progress.message:
                text += f" - {progress.message}"
            if progress.time:
                text += f" (at {progress.time})"
            err_console.print(text)

    run_command(main)


@command(jobs_app, "post")
def post(
    job_type: Annotated[str, typer.Argument(metavar="TYPE", help="The job type, e.g. email.")],
    config: Annotated[
        str,
        typer.Option(
            "--config",
            "-c",
            help="The job's config: JSON text, @file.json, or - for stdin.",
        ),
    ] = "{}",
    options: Annotated[
        str | None,
        typer.Option(
            "--options",
            "-o",
            help="The job's options (docs/scheduling.md), e.g. '{\"priority\": 5}': "
            "JSON text, @file.json, or - for stdin.",
        ),
    ] = None,
    service: ServiceOption = None,
    wait: WaitOption = False,
    timeout: WaitTimeoutOption = 60.0,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Post a new job of TYPE to the service's pending list.

    With --wait, exits 0 when the job succeeds and 1 when it fails.
    """
    settings = settings_from(domain=domain, token=token, layout=layout, service=service)
    name = resolve_service(settings, service)
    if not job_type.strip():
        raise CLIError("TYPE must not be empty", ExitCode.USAGE)
    parsed = read_json_argument(config, "--config")
    if not isinstance(parsed, Mapping):
        raise CLIError(
            f"--config must be a JSON object, got {type(parsed).__name__}", ExitCode.USAGE
        )
    chosen_options = None
    if options is not None:
        chosen_options, problems = JobOptions.parse(read_json_argument(options, "--options"))
        if problems:
            raise CLIError(f"--options: {'; '.join(problems)}", ExitCode.USAGE)
    run_command(
        lambda: post_and_report(
            settings, name, job_type, dict(parsed), wait, timeout, json, options=chosen_options
        )
    )


@command(jobs_app, "retry")
def retry(
    job: Annotated[str, typer.Argument(help="The failed job: resources/<key> or <key>.")],
    force: Annotated[
        bool, typer.Option("--force", help="Re-post even if the job did not fail.")
    ] = False,
    wait: WaitOption = False,
    timeout: WaitTimeoutOption = 60.0,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Post a failed job's service, type, config and options again, as a new job.

    The failed job stays where it was filed.
    """
    settings = settings_from(domain=domain, token=token, layout=layout)
    job_id = job_id_of(job)

    async def main() -> None:
        async with connect(settings) as oada:
            try:
                response = await oada.get(resource_path(job_id))
            except NotFound:
                raise CLIError(f"no job {job_id} on {oada.domain}") from None
        try:
            old = Job.from_resource(response.data, oada_id=job_id)
        except InvalidJob as error:
            raise CLIError(f"cannot retry {job_id}: {error}") from None
        if old.status != "failure" and not force:
            raise CLIError(
                f"{job_id} has status {old.status or 'pending'}, not failure; "
                "pass --force to post it again anyway"
            )
        await post_and_report(
            settings,
            old.service,
            old.type,
            dict(old.config),
            wait,
            timeout,
            json,
            job_id,
            # Priority, group, unique key, version and tries are part of the
            # job asked for, as much as its config.
            options=old.options if old.options.to_json() else None,
        )

    run_command(main)


TypesOption = Annotated[
    list[str] | None,
    typer.Option("--type", help="Only this job type (repeat for more); default: every type."),
]


def _pause(
    paused: bool,
    service: str | None,
    types: list[str] | None,
    json: bool,
    domain: str | None,
    token: str | None,
) -> None:
    settings = settings_from(domain=domain, token=token, service=service)
    name = resolve_service(settings, service)

    async def main() -> None:
        async with connect(settings) as oada:
            try:
                body = await set_paused(oada, name, paused, types or ())
            except ValueError as error:
                raise CLIError(str(error)) from None
        if json:
            print_json({"service": name, **body}, plain=True)
            return
        what = ", ".join(types) if types else "every job type"
        verb = "paused" if paused else "resumed"
        out_console.print(f"{verb} {what} of {name} ({control_path(name)})")

    run_command(main)


@command(jobs_app, "pause")
def pause(
    service: ServiceOption = None,
    types: TypesOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Stop starting jobs of a type (or of every type) on all replicas.

    Paused jobs stay pending; running ones finish. See docs/control.md.
    """
    _pause(True, service, types, json, domain, token)


@command(jobs_app, "resume")
def resume(
    service: ServiceOption = None,
    types: TypesOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Start jobs of a paused type again (without --type: resume everything)."""
    _pause(False, service, types, json, domain, token)


@command(jobs_app, "cancel")
def cancel(
    job: Annotated[str, typer.Argument(help="The job: resources/<key> or <key>.")],
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Ask for a pending or running job to be cancelled.

    The service stops a running work function and files the job as a failure
    of type "cancelled"; a pending job is filed that way without running.
    """
    settings = settings_from(domain=domain, token=token)
    job_id = job_id_of(job)

    async def main() -> None:
        async with connect(settings) as oada:
            try:
                requested = await request_cancel(
                    oada, job_id, "cancelled with oada-jobs jobs cancel"
                )
            except NotFound:
                raise CLIError(f"no job {job_id} on {oada.domain}") from None
            except InvalidJob as error:
                raise CLIError(f"cannot cancel {job_id}: {error}") from None
            except OADAError:
                raise
            except OADAJobsError as error:  # it kept changing under us
                raise CLIError(str(error)) from None
            if not requested:
                current = Job.from_resource(
                    (await oada.get(resource_path(job_id))).data, oada_id=job_id
                )
                raise CLIError(f"{job_id} already finished with status {current.status}")
        if json:
            print_json({"id": job_id, "cancel": "requested"}, plain=True)
        else:
            out_console.print(f"asked to cancel {job_id}")
            print_next_steps(job_id)

    run_command(main)


def _days_of(text: str) -> int:
    """Whole days from ``30d`` or ``30``."""
    cleaned = text.strip().lower().removesuffix("d")
    if not cleaned.isascii() or not cleaned.isdigit() or len(cleaned) > 6:
        raise CLIError(
            f"--older-than must be whole days like 30d or 30, got {text!r}", ExitCode.USAGE
        )
    return int(cleaned)


@command(jobs_app, "purge")
def purge_jobs(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Remove jobs filed more than this many days ago: 30d (or 30)."
        ),
    ],
    status: Annotated[
        str, typer.Option(help="Which finished jobs: success, failure or all.")
    ] = "all",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    service: ServiceOption = None,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a service's finished jobs filed more than --older-than days ago.

    Day lists before the cutoff go, with the finished jobs of the service
    linked there (docs/retention.md). Recorded in the service's retention
    resource; --dry-run writes nothing.
    """
    settings = settings_from(domain=domain, token=token, layout=layout, service=service)
    name = resolve_service(settings, service)
    days = _days_of(older_than)
    if status not in ("success", "failure", "all"):
        raise CLIError(f"--status must be success, failure or all, got {status!r}", ExitCode.USAGE)
    statuses = ("success", "failure") if status == "all" else (status,)

    async def main() -> None:
        async with connect(settings) as oada:
            chosen = await resolve_layout(oada, settings, name)
            report = await purge(
                oada,
                name,
                older_than=dict.fromkeys(statuses, days),
                layout=chosen,
                dry_run=dry_run,
                by="by oada-jobs jobs purge",
            )
        if json:
            print_json({"service": name, **report.to_json()}, plain=True)
            return
        verb = "would remove" if dry_run else "removed"
        for item in report.lists:
            out_console.print(
                f"{item.status}: {verb} {item.jobs} job(s) in {len(item.days)} day list(s) "
                f"before {item.cutoff}"
                + (f"; {item.kept} linked resource(s) unlinked, not deleted" if item.kept else "")
            )

    run_command(main)
