"""``oada-jobs jobs``: list, show, post, retry, cancel and purge jobs of a service;
pause and resume its job types.

Owns this command only. May use the framework and ``cli/_common``; nothing
but the ``cli`` package may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

import anyio
import typer
from rich.table import Table

from ..client import OADAClient
from ..control import control_path, set_paused
from ..exceptions import InvalidJob, InvalidKey, NotFound, OADAError, OADAJobsError
from ..job import FINISHED, Job, JobOptions, parse_time, request_cancel
from ..requester import latest_progress
from ..retention import purge
from ..testing import post_job, wait_for_job
from ..tree import Layout, resource_path, service_root
from ._app import app
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

jobs_app = typer.Typer(
    name="jobs",
    help="List, show, post, retry, cancel and purge the jobs of a service; pause and resume types.",
    no_args_is_help=True,
)
app.add_typer(jobs_app)

WaitOption = Annotated[
    bool, typer.Option("--wait", help="Wait until the (new) job finished and print it.")
]
WaitTimeoutOption = Annotated[
    float, typer.Option(min=0.1, help="Seconds --wait waits before giving up.")
]

#: Status colours in tables.
_STYLE = {
    "success": "green",
    "failure": "red",
    "running": "yellow",
    "pending": "cyan",
    "cancel-requested": "magenta",
}


@dataclass(frozen=True, slots=True)
class JobRow:
    """One line of ``jobs list``."""

    list: str
    key: str
    job_id: str | None
    type: str | None
    status: str | None
    updated: str | None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        row = {
            "key": self.key,
            "id": self.job_id,
            "type": self.type,
            "status": self.status,
            "updated": self.updated,
        }
        if self.problem is not None:
            row["problem"] = self.problem
        return row


def _entries(listing: object) -> list[tuple[str, str | None]]:
    """``(key, resources/<id> or None)`` of a job list, oldest key first."""
    if not isinstance(listing, Mapping):
        return []
    found = []
    for key, value in listing.items():
        if key.startswith("_") or key == "day-index":
            continue
        link = value.get("_id") if isinstance(value, Mapping) else None
        found.append((key, link if isinstance(link, str) else None))
    # Keys posted by OADA or by this framework are time-ordered KSUIDs.
    return sorted(found)


def _last_update(job: Job[Any]) -> str | None:
    times = [
        str(update["time"])
        for update in job.updates.values()
        if isinstance(update, Mapping) and isinstance(update.get("time"), str)
    ]
    return max(times) if times else None


async def _row(oada: OADAClient, list_name: str, key: str, job_id: str | None) -> JobRow:
    if job_id is None:
        return JobRow(list_name, key, None, None, None, None, "entry is not a link to a job")
    try:
        response = await oada.get(resource_path(job_id))
        job = Job.from_resource(response.data, oada_id=job_id, key=key)
    except InvalidKey as error:
        return JobRow(list_name, key, job_id, None, None, None, str(error))
    except NotFound:
        return JobRow(list_name, key, job_id, None, None, None, "job resource does not exist")
    except OADAError as error:
        return JobRow(list_name, key, job_id, None, None, None, f"cannot read: {error}")
    except InvalidJob as error:
        return JobRow(list_name, key, job_id, None, None, None, str(error))
    return JobRow(list_name, key, job_id, job.type, job.status or "pending", _last_update(job))


async def _rows(
    oada: OADAClient, list_name: str, entries: list[tuple[str, str | None]]
) -> list[JobRow]:
    rows: list[JobRow | None] = [None] * len(entries)

    async def fill(index: int, key: str, job_id: str | None) -> None:
        rows[index] = await _row(oada, list_name, key, job_id)

    async with anyio.create_task_group() as group:
        for index, (key, job_id) in enumerate(entries):
            group.start_soon(fill, index, key, job_id)
    return [row for row in rows if row is not None]


async def _get_or_none(oada: OADAClient, path: str) -> Any:
    try:
        return (await oada.get(path)).data
    except NotFound:
        return None


async def _latest_day(oada: OADAClient, list_path: str) -> str | None:
    index = await _get_or_none(oada, f"{list_path}/day-index")
    if not isinstance(index, Mapping):
        return None
    # Only real days: a key of the list is data, and it goes into a path next.
    days = [key for key in index if _is_day(key)]
    return max(days) if days else None


def _is_day(key: str) -> bool:
    try:
        return date.fromisoformat(key).isoformat() == key
    except ValueError:
        return False


async def _finished(
    oada: OADAClient, layout: Layout, service: str, status: str, day: str | None, limit: int
) -> tuple[str | None, list[JobRow]]:
    base = f"{service_root(service)}/{layout.success if status == 'success' else layout.failure}"
    chosen = day or await _latest_day(oada, base)
    if chosen is None:
        return None, []
    listing = await _get_or_none(oada, f"{base}/day-index/{chosen}")
    return chosen, await _rows(oada, status, _entries(listing)[-limit:])


def _status_text(status: str | None) -> str:
    if status is None:
        return "[dim]?[/]"
    return f"[{_STYLE.get(status, 'white')}]{status}[/]"


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
        try:
            date.fromisoformat(day)
        except ValueError:
            message = f"--day must be a date like 2026-01-31, got {day!r}"
            raise CLIError(message, ExitCode.USAGE) from None

    async def main() -> None:
        async with connect(settings) as oada:
            chosen = await resolve_layout(oada, settings, name)
            pending = _entries(await _get_or_none(oada, chosen.pending_path(name)))
            pending_rows = await _rows(oada, "pending", pending[-limit:])
            success_day, success = await _finished(oada, chosen, name, "success", day, limit)
            failure_day, failure = await _finished(oada, chosen, name, "failure", day, limit)
        if json:
            print_json(
                {
                    "service": name,
                    "layout": chosen.name,
                    # One shape for every list: pending jobs belong to no day.
                    "pending": {"day": None, "jobs": [row.to_json() for row in pending_rows]},
                    "success": {"day": success_day, "jobs": [row.to_json() for row in success]},
                    "failure": {"day": failure_day, "jobs": [row.to_json() for row in failure]},
                },
                plain=True,
            )
            return
        table = Table(title=f"jobs of {name} ({chosen.name} layout)", expand=False)
        table.add_column("list", overflow="fold")
        # Keys whole on one line, so they can be copied into `jobs show`.
        table.add_column("key", no_wrap=True)
        for column in ("type", "status", "updated"):
            table.add_column(column, overflow="fold")
        for label, rows in (
            ("pending", pending_rows),
            (f"success {success_day or ''}".strip(), success),
            (f"failure {failure_day or ''}".strip(), failure),
        ):
            for row in rows:
                status = _status_text(row.status) if row.problem is None else f"[red]{row.problem}"
                table.add_row(label, row.key, row.type or "", status, row.updated or "")
        if table.row_count:
            out_console.print(table)
        else:
            out_console.print(f"no jobs for service {name!r} yet")
        counts = [f"pending: {len(pending)}"]
        for label, day_of, rows in (
            ("success", success_day, success),
            ("failure", failure_day, failure),
        ):
            counts.append(f"{label} ({day_of}): {len(rows)}" if day_of else f"{label}: none yet")
        out_console.print("  ".join(counts))

    run_command(main)


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
        print_json(_public(response.data), plain=json)
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


def _public(data: Any) -> Any:
    """The job as stored, without the server's bookkeeping keys."""
    if isinstance(data, Mapping):
        return {key: value for key, value in data.items() if key not in ("_meta", "_rev")}
    return data


def _next_steps(job_id: str) -> None:
    out_console.print(f"  look at it:  oada-jobs jobs show {job_id}")


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
        lambda: _post_and_report(
            settings, name, job_type, dict(parsed), wait, timeout, json, options=chosen_options
        )
    )


async def _post_and_report(
    settings: Any,
    name: str,
    job_type: str,
    config: dict[str, Any],
    wait: bool,
    wait_seconds: float,
    plain: bool,
    retry_of: str | None = None,
    *,
    options: JobOptions | None = None,
) -> None:
    what = f"retry of {retry_of}" if retry_of else f"{job_type!r} job"
    async with connect(settings) as oada:
        chosen = await resolve_layout(oada, settings, name, posting=True)
        job_id = await post_job(oada, name, job_type, config, layout=chosen.name, options=options)
        announce_posted(job_id, name, what, wait=wait, wait_seconds=wait_seconds, plain=plain)
        finished = await wait_if_asked(oada, job_id, wait, wait_seconds)
    report_posted(
        job_id,
        name,
        what,
        finished,
        wait=wait,
        wait_seconds=wait_seconds,
        plain=plain,
        summary={"retryOf": retry_of} if retry_of is not None else None,
        announced=True,
    )


def announce_posted(
    job_id: str, service: str, what: str, *, wait: bool, wait_seconds: float, plain: bool
) -> None:
    """Say a job was posted at once, before any wait (its id is what one needs
    to look at it, or cancel it, while it runs)."""
    key = job_id.removeprefix("resources/")
    if plain:
        # stdout carries one JSON document at the end; people watch stderr.
        if wait:
            err_console.print(f"posted {job_id}; waiting up to {wait_seconds:g} s")
        return
    out_console.print(f"posted {what} as [bold]{job_id}[/] (key {key}) for {service}")
    if wait:
        out_console.print(f"waiting up to {wait_seconds:g} s for it to finish")


async def wait_if_asked(
    oada: OADAClient, job_id: str, wait: bool, wait_seconds: float
) -> Job[Any] | None:
    """With *wait*, the job once finished, or ``None`` if it did not finish in
    time; its status changes and progress are shown on stderr meanwhile."""
    if not wait:
        return None
    path = resource_path(job_id)
    shown: list[object] = [None, None]

    def show(body: Mapping[str, Any]) -> None:
        status = body.get("status")
        if isinstance(status, str) and status != shown[0]:
            shown[0] = status
            err_console.print(f"  status: {_status_text(status)}")
        progress = latest_progress(body)
        if progress is not None and progress != shown[1]:
            shown[1] = progress
            text = f"  progress: {progress.fraction:.0%}"
            err_console.print(text + (f" - {progress.message}" if progress.message else ""))

    try:
        with anyio.fail_after(wait_seconds):
            response = await oada.get(path)
            if isinstance(response.data, Mapping):
                show(response.data)
            if not (isinstance(response.data, Mapping) and response.data.get("status") in FINISHED):
                async with oada.watch(path, rev=response.rev) as changes:
                    async for change in changes:
                        if change.path not in ("", "/") or not isinstance(change.body, Mapping):
                            continue
                        show(change.body)
                        if change.body.get("status") in FINISHED:
                            break
            return await wait_for_job(oada, job_id, wait_seconds)
    except TimeoutError:
        return None


def report_posted(
    job_id: str,
    service: str,
    what: str,
    finished: Job[Any] | None,
    *,
    wait: bool,
    wait_seconds: float,
    plain: bool,
    summary: Mapping[str, Any] | None = None,
    announced: bool = False,
) -> None:
    """Print a job just posted (*what* it is; not again if *announced*), and
    its outcome when waited for.

    ``--json`` prints ``{id, key, service, **summary, status?, result?}``.
    Raises :class:`CLIError` (exit 1) when the job failed, saying why and
    its fail type, or did not finish within *wait_seconds*.
    """
    key = job_id.removeprefix("resources/")
    if plain:
        printed: dict[str, Any] = {"id": job_id, "key": key, "service": service, **(summary or {})}
        if finished is not None:
            printed["status"] = finished.status
            printed["result"] = finished.result
        print_json(printed, plain=True)
    else:
        if not announced:
            out_console.print(f"posted {what} as [bold]{job_id}[/] (key {key}) for {service}")
        if finished is not None:
            print_json(_public(finished.raw), plain=False)
        else:
            _next_steps(job_id)
    if wait and finished is None:
        raise CLIError(
            f"{job_id} did not finish within {wait_seconds:g} s; it stays posted "
            f"(oada-jobs jobs show {job_id})",
            ExitCode.FAILED,
        )
    if finished is not None and finished.status != "success":
        result = finished.result if isinstance(finished.result, Mapping) else {}
        reason = result.get("message")
        fail_type = result.get("failType")
        message = f"{job_id} finished with status {finished.status}"
        if isinstance(reason, str) and reason:
            message += f": {reason}"
        if isinstance(fail_type, str):
            message += f" (fail type {fail_type})"
        raise CLIError(message, ExitCode.FAILED)


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
        await _post_and_report(
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
            _next_steps(job_id)

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


def finished_at(job: Job[Any]) -> date | None:
    """The day the job finished (from its last finishing update), if it did."""
    for update in reversed(list(job.updates.values())):
        if isinstance(update, Mapping) and update.get("status") == job.status:
            moment = parse_time(update.get("time"))
            if moment is not None:
                return moment.date()
    return None


def filed_paths(job: Job[Any], layout: Layout) -> list[str]:
    """Where a finished job is linked: its day list, and its typed-failure day list."""
    day = finished_at(job)
    if day is None or not job.finished or job.status is None:
        return []
    paths = [layout.day_index_path(job.service, job.status, day)]
    result = job.result
    fail_type = result.get("failType") if isinstance(result, Mapping) else None
    if job.status == "failure" and isinstance(fail_type, str):
        paths.append(layout.day_index_path(job.service, job.status, day, fail_type))
    return paths


__all__ = [
    "JobRow",
    "filed_paths",
    "finished_at",
    "jobs_app",
    "report_posted",
    "wait_if_asked",
]
