"""``oada-jobs report``: counts and durations of a service's finished jobs per type and status.

Owns this command only. May use the framework and ``cli/_common``; nothing
but the ``cli`` package may import it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..reports import JobRecord, TypeSummary, collect_jobs, days_between, summarize, write_csv
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
    out_console,
    print_json,
    resolve_layout,
    resolve_service,
    run_command,
    settings_from,
)


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CLIError(
            f"{option} must be a day as YYYY-MM-DD, got {text!r}", ExitCode.USAGE
        ) from None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@command(app, "report")
def report(
    since: Annotated[
        str | None,
        typer.Option("--from", help="First day (YYYY-MM-DD, UTC). Default: --days before --to."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day (YYYY-MM-DD, UTC). Default: today.")
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, help="Days to cover when --from is not given.")
    ] = 1,
    csv_file: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write every job (one row each) to this CSV file."),
    ] = None,
    service: ServiceOption = None,
    layout: LayoutOption = None,
    json: JsonOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Count a service's finished jobs per type and status, with durations (seconds).

    Reads the success and failure day lists from --from to --to.
    """
    settings = settings_from(domain=domain, token=token, layout=layout, service=service)
    name = resolve_service(settings, service)
    first, last = _period(since, until, days)
    if csv_file is not None and csv_file.is_dir():
        raise CLIError(f"--csv must name a file, got the directory {csv_file}", ExitCode.USAGE)

    async def main() -> None:
        async with connect(settings) as oada:
            chosen = await resolve_layout(oada, settings, name)
            records = await collect_jobs(oada, name, first, last, layout=chosen.name)
        rows = _write_csv(records, csv_file) if csv_file is not None else None
        summaries = summarize(records)
        if json:
            print_json(
                _report_json(name, first, last, records, summaries, csv_file, rows), plain=True
            )
            return
        _print_table(f"{name}: jobs finished {first} .. {last}", summaries)
        out_console.print(f"{len(records)} job(s)")
        if csv_file is not None:
            out_console.print(f"wrote {rows} row(s) to {csv_file}")

    run_command(main)


def _period(since: str | None, until: str | None, days: int) -> tuple[date, date]:
    """The first and last day of --from, --to and --days (default: *days* to today)."""
    last = _day(until, "--to") or datetime.now(UTC).date()
    first = _day(since, "--from") or last - timedelta(days=days - 1)
    try:
        days_between(first, last)
    except ValueError as error:
        raise CLIError(str(error), ExitCode.USAGE) from None
    return first, last


def _write_csv(records: list[JobRecord], csv_file: Path) -> int:
    try:
        with csv_file.open("w", encoding="utf-8", newline="") as out:
            return write_csv(records, out)
    except OSError as error:
        raise CLIError(f"cannot write {csv_file}: {error.strerror}") from None


def _report_json(
    service: str,
    first: date,
    last: date,
    records: list[JobRecord],
    summaries: list[TypeSummary],
    csv_file: Path | None,
    rows: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": service,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "jobs": len(records),
        "summary": [asdict(s) for s in summaries],
    }
    if csv_file is not None:
        body["csv"] = {"file": str(csv_file), "rows": rows}
    return body


def _print_table(title: str, summaries: list[TypeSummary]) -> None:
    table = Table(title=title)
    for column in ("type", "status", "count", "mean s", "median s", "p95 s", "max s"):
        table.add_column(column, justify="left" if column in ("type", "status") else "right")
    for s in summaries:
        table.add_row(
            s.type,
            s.status,
            str(s.count),
            _seconds(s.mean),
            _seconds(s.median),
            _seconds(s.p95),
            _seconds(s.max),
        )
    out_console.print(table)
