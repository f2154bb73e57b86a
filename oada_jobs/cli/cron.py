"""``oada-jobs cron``: list a service's cron entries and run one now, outside its schedule.

Owns this command only. May use the framework and ``cli/_common``; nothing
but the ``cli`` package may import it.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from pydantic import SecretStr
from rich.markup import escape

from ..cron import CronEntry, entries_of, entry_named, post_now, read_state
from ..job import iso, parse_time, utc_now
from ..requester import wait_for_outcome
from ..service import Service
from ..settings import Settings
from ._common import (
    CLIError,
    DomainOption,
    ExitCode,
    JsonOption,
    TokenOption,
    command,
    connect,
    err_console,
    out_console,
    print_json,
    run_command,
    settings_from,
)
from ._job_posting import filed_or_as_is, report_posted
from ._run import apply_settings, import_service

cron_app = typer.Typer(
    name="cron",
    help="List the cron entries of a service in your code, and run one now.",
    no_args_is_help=True,
)

TargetArgument = Annotated[
    str,
    typer.Argument(
        metavar="MODULE:SERVICE",
        help="Where your Service is, e.g. myapp.jobs:service (as for oada-jobs run).",
    ),
]
LayoutOption = Annotated[
    str | None,
    typer.Option(
        "--layout",
        help="Job-list layout: classic or pending (default: what the service's code chose). "
        "\\[env: OADA_JOBS_LAYOUT]",
        show_default=False,
    ),
]
AppDirOption = Annotated[
    Path | None,
    typer.Option(help="Directory to import MODULE from (default: the current one)."),
]

#: What a job posted by ``cron run`` says about who started it.
BY = "by oada-jobs cron run"


def _load(
    target: str, app_dir: Path | None, domain: str | None, token: str | None, layout: str | None
) -> tuple[Service, Settings]:
    """The service from the user's code, with the flags, environment and .env applied."""
    settings = settings_from(domain=domain, token=token, layout=layout)
    service = import_service(target, app_dir)
    apply_settings(service, settings)
    return service, settings


def _connection(service: Service, settings: Settings, *, required: bool) -> Settings | None:
    """Settings to connect as the service would; without a domain or token,
    ``None``, or with *required* a :class:`CLIError` (exit 2)."""
    try:
        domain = service.domain
    except RuntimeError:
        if not required:
            return None
        raise CLIError(
            f"no OADA domain for {service.name}: pass --domain https://your.oada.server or "
            "set OADA_DOMAIN",
            ExitCode.USAGE,
        ) from None
    # A token given in the service's code is the one `oada-jobs run` uses too.
    token = settings.token_value() or service.token
    if token is None:
        if not required:
            return None
        raise CLIError("no OADA token given: set OADA_TOKEN or pass --token", ExitCode.USAGE)
    return settings.model_copy(update={"domain": domain, "token": SecretStr(token)})


def _minute(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


def _tick_time(moment: datetime) -> str:
    # Seconds only for the ticks of six-field schedules that fall within a minute.
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment.second else _minute(moment)


def _shown_time(text: str) -> str:
    moment = parse_time(text)
    return _minute(moment) if moment is not None else text


def _last(state: Mapping[str, Any], name: str, manual: bool) -> dict[str, Any] | None:
    """``{"time", "job"}`` of the latest tick (or run by hand) of entry *name*."""
    seen = state.get(name)
    if isinstance(seen, Mapping) and manual:
        seen = seen.get("manual")
    if not isinstance(seen, Mapping) or not isinstance(seen.get("last"), str):
        return None
    job = seen.get("job")
    return {"time": seen["last"], "job": job if isinstance(job, str) else None}


def _skipped(state: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """``{"tick", "running", "count"}`` of the entry's latest skipped tick, if any."""
    seen = state.get(name)
    skipped = seen.get("skipped") if isinstance(seen, Mapping) else None
    if not isinstance(skipped, Mapping) or not isinstance(skipped.get("tick"), str):
        return None
    running, count = skipped.get("running"), skipped.get("count")
    return {
        "tick": skipped["tick"],
        "running": running if isinstance(running, str) else None,
        "count": count if isinstance(count, int) and not isinstance(count, bool) else 0,
    }


def _entry_json(
    entry: CronEntry, ticks: list[datetime], state: Mapping[str, Any] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name,
        "schedule": entry.schedule,
        "timezone": entry.timezone,
        "type": entry.type,
        "config": entry.config,
        "options": entry.options,
        "overlap": entry.overlap,
        "next": [iso(tick) for tick in ticks],
    }
    if entry.version is not None:
        row["version"] = entry.version
    if state is not None:
        row["lastTick"] = _last(state, entry.name, manual=False)
        row["lastManual"] = _last(state, entry.name, manual=True)
        row["skipped"] = _skipped(state, entry.name)
    return row


@command(cron_app, "list")
def list_entries(
    target: TargetArgument,
    count: Annotated[
        int, typer.Option("--next", "-n", min=1, max=100, help="Show this many next runs.")
    ] = 3,
    app_dir: AppDirOption = None,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """List the service's cron entries: schedule, type, config and next runs (UTC).

    With a domain and token (flags, environment, .env or the service's code)
    it also shows each entry's latest tick and latest run by hand.
    """
    service, settings = _load(target, app_dir, domain, token, layout)
    entries = entries_of(service)
    connection = _connection(service, settings, required=False)
    now = utc_now()

    async def main() -> None:
        state: dict[str, Any] | None = None
        if connection is not None and entries:
            async with connect(connection) as oada:
                state = await read_state(oada, service.name)
        rows = [(entry, entry.next_ticks(now, count)) for entry in entries]
        if json:
            print_json(
                {
                    "service": service.name,
                    "now": iso(now),
                    "entries": [_entry_json(entry, ticks, state) for entry, ticks in rows],
                },
                plain=True,
            )
        elif not entries:
            out_console.print(
                f"service {service.name} has no cron entries "
                '(add one with service.cron("name", "*/5 * * * *"))'
            )
        else:
            _print_entries(service.name, rows, state)
            out_console.print(
                f"run one now:  oada-jobs cron run {target} {entries[0].name} [--wait]",
                markup=False,
            )

    run_command(main)


def _print_entries(
    service: str, rows: list[tuple[CronEntry, list[datetime]]], state: Mapping[str, Any] | None
) -> None:
    """One block per entry rather than a table: schedules, configs and job
    ids stay whole at 80 columns."""
    out_console.print(f"cron entries of [bold]{service}[/] (times in UTC)")
    for entry, ticks in rows:
        config = jsonlib.dumps(entry.config, separators=(", ", ": "))
        out_console.print()
        zone = "" if entry.timezone == "UTC" else f" ({escape(entry.timezone)})"
        out_console.print(
            f"[bold]{escape(entry.name)}[/]  {escape(entry.schedule)}{zone}  "
            f"posts {entry.type!r} {escape(config)}"
        )
        out_console.print(f"  next runs  {', '.join(_tick_time(tick) for tick in ticks)}")
        if state is not None:
            _print_runs(state, entry.name)
    if state is None:
        err_console.print(
            "[dim]no OADA domain or token: latest runs not shown "
            "(pass --domain/--token or set OADA_DOMAIN/OADA_TOKEN)[/]"
        )
    out_console.print()


def _print_runs(state: Mapping[str, Any], name: str) -> None:
    """The entry's latest tick, latest run by hand and latest skipped tick."""
    for label, manual in (("last tick", False), ("by hand  ", True)):
        last = _last(state, name, manual)
        text = f"{_shown_time(last['time'])}  {last['job'] or ''}" if last else "never"
        out_console.print(f"  {label}  {escape(text)}".rstrip())
    skipped = _skipped(state, name)
    if skipped is not None:
        text = (
            f"{_shown_time(skipped['tick'])}  while {skipped['running'] or '?'} ran "
            f"({skipped['count']} skipped in all)"
        )
        out_console.print(f"  skipped    {escape(text)}")


@command(cron_app, "run")
def run_entry(
    target: TargetArgument,
    name: Annotated[str, typer.Argument(metavar="ENTRY", help="The cron entry's name.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the job finished and print it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds --wait waits before giving up.")
    ] = 60.0,
    app_dir: AppDirOption = None,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Post the job of cron entry ENTRY now, outside its schedule.

    The job has the entry's type and config, runs like a tick's job and is
    marked as run by hand (cron.manual and a "manual" update). The schedule
    is not touched: the next tick still posts. With --wait, exits 0 when the
    job succeeds and 1 when it fails or does not finish in time.
    """
    service, settings = _load(target, app_dir, domain, token, layout)
    try:
        entry = entry_named(service, name)
    except LookupError as error:
        raise CLIError(str(error), ExitCode.USAGE) from None
    connection = _connection(service, settings, required=True)

    async def main() -> None:
        assert connection is not None
        async with connect(connection) as oada:
            job_id = await post_now(oada, service.name, entry, layout=service.layout.name, by=BY)
            finished = None
            if wait:
                deadline = anyio.current_time() + timeout
                try:
                    finished = await wait_for_outcome(oada, job_id, timeout=timeout)
                except TimeoutError:
                    finished = None
                else:
                    finished = await filed_or_as_is(oada, finished, service.layout.name, deadline)
        report_posted(
            job_id,
            service.name,
            f"cron entry {entry.name!r} ({entry.type!r} job, by hand)",
            finished,
            wait=wait,
            wait_seconds=timeout,
            plain=json,
            summary={"cron": {"entry": entry.name, "manual": True}},
        )

    run_command(main)


__all__ = ["cron_app"]
