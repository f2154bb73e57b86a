"""Reports over finished jobs: counts and durations per type and status.

Reads a service's success and failure day lists (``day-index/<YYYY-MM-DD>``,
either layout) for a range of days, reads every job linked there, and
summarises them:

>>> records = await collect_jobs(oada, "email-service", date(2026, 11, 1), date(2026, 11, 23))  # doctest: +SKIP
>>> for row in summarize(records): print(row.type, row.status, row.count, row.mean)  # doctest: +SKIP

``oada-jobs report`` prints the same (``--json``, ``--csv FILE``).

A service can also make a report on a cron schedule, store it in OADA and
have it mailed (see :func:`add_report`):

>>> service.add_report("daily", "0 6 * * *", email={"from": "jobs@example.org", "to": "ops@example.org"})  # doctest: +SKIP

Owns scheduled reports (:class:`ReportConfig`, a work function plus a cron
entry; provides ``service.add_report(...)``). Reading day lists into
records, summaries and CSV is :mod:`oada_jobs.records`', re-exported here,
where users import them from. Sits above the service and cron and uses only
their public API; nothing in the framework imports it.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .client import OADAClient
from .context import WorkerContext
from .cron import CronEntry, add_entry, entries_of
from .exceptions import NotFound, OADATransportError, ServerError
from .job import Job, iso, parse_time, utc_now
from .records import (
    CSV_COLUMNS,
    MAX_DAYS,
    JobRecord,
    TypeSummary,
    collect_jobs,
    days_between,
    job_record,
    resolve_pointer,
    summarize,
    write_csv,
)
from .requester import post_job
from .service import Service, ServiceState
from .tree import (
    LayoutName,
    get_layout,
    path_segment,
    resource_path,
    service_root,
    validate_service_name,
)
from .types import Json, JsonObject, Tree

__all__ = [
    "CSV_COLUMNS",
    "REPORTS_TYPE",
    "REPORT_TYPE",
    "JobRecord",
    "ReportConfig",
    "TypeSummary",
    "add_report",
    "collect_jobs",
    "days_between",
    "job_record",
    "queued_layout",
    "report_path",
    "resolve_pointer",
    "run_report",
    "summarize",
    "summary_text",
    "write_csv",
]

#: Type of the ``reports`` lists (per report, and per day).
REPORTS_TYPE = "application/vnd.oada.service.reports.1+json"
#: Type of one stored report.
REPORT_TYPE = "application/vnd.oada.service.report.1+json"
#: Job type of the mail jobs a report posts (as ``abalonemail`` expects).
EMAIL_JOB_TYPE = "email"
#: Seconds a report job may run, unless ``add_report(timeout=...)`` says otherwise.
REPORT_TIMEOUT = 600.0

_REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")
# The same shape as job keys (oada_jobs.requester): one safe path segment.
_JOB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


class ReportConfig(BaseModel):
    """What one report run reads, writes and sends: the config of a report job.

    :func:`add_report` puts it on its cron entry, so each tick's job carries
    it; the JSON keys are camelCase (``includeToday``, ``sendEmpty``...). A
    job posted by hand may add ``from``/``to`` (``YYYY-MM-DD``) to report on
    those days instead of the days before the run.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=_camel, populate_by_name=True
    )

    #: The report's name: where it is stored, and its cron entry.
    report: str
    #: How many days the report covers.
    days: StrictInt = 1
    #: Cover the day of the run too (up to the run); by default the period
    #: ends the day before, so a report covers whole days.
    include_today: StrictBool = False
    #: CSV columns, header → source (a :data:`CSV_COLUMNS` name or a JSON
    #: pointer into the job); ``None`` for :data:`CSV_COLUMNS`.
    columns: dict[str, str] | None = None
    #: Only jobs of these types (unreadable jobs, type ``?``, are always kept).
    types: list[str] | None = None
    #: The ``abalonemail`` email config (``from``, ``to``, ``subject``...) to
    #: mail the report with, the CSV attached; ``None`` for no mail.
    email: dict[str, Any] | None = None
    #: Mail a report that has no jobs (by default it is only stored).
    send_empty: StrictBool = False
    #: The service the mail job is posted to, and the layout it runs with.
    email_service: str = "abalonemail"
    email_layout: LayoutName = "pending"
    #: Report on these days instead (both or neither).
    first: date | None = Field(default=None, alias="from")
    last: date | None = Field(default=None, alias="to")

    @field_validator("report")
    @classmethod
    def _check_report(cls, value: str) -> str:
        if not _REPORT_NAME.fullmatch(value):
            raise ValueError(
                "expected a report name of letters, digits and '.', '_', '~', '-' "
                f"(starting with a letter or digit, at most 64), got {value!r}"
            )
        return value

    @field_validator("days")
    @classmethod
    def _check_days(cls, value: int) -> int:
        if not 1 <= value <= MAX_DAYS:
            raise ValueError(f"expected days from 1 to {MAX_DAYS}, got {value}")
        return value

    @field_validator("columns")
    @classmethod
    def _check_columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("expected at least one column (or columns=None for the standard ones)")
        for header, source in value.items():
            if not header:
                raise ValueError("expected non-empty column names, got ''")
            if source.startswith("/"):
                continue
            if source not in CSV_COLUMNS:
                raise ValueError(
                    f"column {header!r}: expected a JSON pointer such as '/config/to' or one of "
                    f"{', '.join(CSV_COLUMNS)}, got {source!r}"
                )
        return value

    @field_validator("types")
    @classmethod
    def _check_types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError(f"expected a non-empty list of job types, got {value!r}")
        return value

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        missing = [name for name in ("from", "to") if not value.get(name)]
        if missing:
            raise ValueError(
                f"expected an email config with 'from' and 'to', {' and '.join(map(repr, missing))} "
                f"missing or empty in {sorted(value)}"
            )
        attachments = value.get("attachments", [])
        if not isinstance(attachments, list) or not all(
            isinstance(item, Mapping) for item in attachments
        ):
            raise ValueError(
                f"expected email 'attachments' to be a list of objects, got {attachments!r}"
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"expected an email config of JSON values: {error}") from None
        return value

    @field_validator("email_service")
    @classmethod
    def _check_email_service(cls, value: str) -> str:
        return validate_service_name(value)

    @model_validator(mode="after")
    def _check_period(self) -> ReportConfig:
        if (self.first is None) != (self.last is None):
            raise ValueError("expected both 'from' and 'to', or neither")
        if self.first is not None and self.last is not None:
            days_between(self.first, self.last)
        return self

    def period(self, made: date) -> tuple[date, date]:
        """First and last day covered by a report made on *made*."""
        if self.first is not None and self.last is not None:
            return self.first, self.last
        last = made if self.include_today else made - timedelta(days=1)
        return last - timedelta(days=self.days - 1), last

    def to_json(self) -> JsonObject:
        """The config as a job carries it (camelCase, no unset ``from``/``to``)."""
        return dict(self.model_dump(mode="json", by_alias=True, exclude_none=True))


def report_path(service: str, report: str, day: date, key: str) -> str:
    """Where a report run is stored:
    ``/bookmarks/services/<service>/reports/<report>/day-index/<day>/<key>``.

    *day* is the day the report was made (UTC), *key* its job's key.
    """
    return (
        f"{service_root(service)}/reports/{path_segment(report)}/day-index/{day.isoformat()}/"
        f"{path_segment(key)}"
    )


def _reports_tree(layout: LayoutName) -> Tree:
    tree: dict[str, Any] = {**get_layout(layout).tree}
    bookmarks = {**tree["bookmarks"]}
    services = {**bookmarks["services"]}
    day = {"_type": REPORTS_TYPE, "_rev": 0, "*": {"_type": REPORT_TYPE, "_rev": 0}}
    report = {"_type": REPORTS_TYPE, "_rev": 0, "day-index": {"*": day}}
    services["*"] = {**services["*"], "reports": {"_type": REPORTS_TYPE, "_rev": 0, "*": report}}
    bookmarks["services"] = services
    tree["bookmarks"] = bookmarks
    return tree


def _message(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail["loc"])
        text = str(detail["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {text}" if where else text)
    return "; ".join(problems)


def add_report(
    service: Service,
    name: str,
    schedule: str,
    *,
    days: int = 1,
    include_today: bool = False,
    columns: Mapping[str, str] | None = None,
    types: Iterable[str] | None = None,
    email: Mapping[str, Any] | None = None,
    send_empty: bool = False,
    email_service: str = "abalonemail",
    email_layout: LayoutName = "pending",
    type: str | None = None,
    timeout: float = REPORT_TIMEOUT,
) -> CronEntry:
    """Make a report of *service*'s finished jobs on a cron *schedule* (UTC).

    What ``service.add_report(...)`` does. Registers a work function for the
    job type *type* (default ``report-<name>``) and a cron entry *name*, so
    each run is an ordinary job: posted once per tick over all replicas,
    retried on connection errors, filed in the day lists, and runnable now
    with ``oada-jobs cron run MODULE:SERVICE <name>``. A run

    1. reads the jobs filed in the *days* days before the tick's day (with
       *include_today*, the *days* days up to and including it);
    2. stores the summary and the CSV at :func:`report_path`;
    3. with *email* (an ``abalonemail`` email config: ``from``, ``to``,
       optional ``subject``, ``text``...), posts an ``email`` job to
       *email_service* with the CSV attached, unless the report has no jobs
       and *send_empty* is false.

    :param columns: CSV header → source, a :data:`CSV_COLUMNS` name or a JSON
        pointer into the job, e.g. ``{"job": "id", "to": "/config/to"}``.
    :param types: report only jobs of these types.
    :param timeout: seconds a run may take.

    Bad arguments raise :class:`ValueError` (:class:`RuntimeError` once the
    service started) and register nothing.

    >>> add_report(service, "weekly", "0 6 * * 1", days=7, columns={"job": "id", "to": "/config/to"})  # doctest: +SKIP
    """
    if service.state is not ServiceState.CREATED:
        raise RuntimeError("add reports before the service starts")
    config = _report_config(
        name, days, include_today, columns, types, email, send_empty, email_service, email_layout
    )
    job_type = type if type is not None else f"report-{name}"
    return _register(service, CronEntry(name, schedule, job_type, config.to_json()), timeout)


def _report_config(
    name: str,
    days: int,
    include_today: bool,
    columns: Mapping[str, str] | None,
    types: Iterable[str] | None,
    email: Mapping[str, Any] | None,
    send_empty: bool,
    email_service: str,
    email_layout: LayoutName,
) -> ReportConfig:
    """The checked config of report *name* (see :func:`add_report`), or :class:`ValueError`."""
    if isinstance(types, str):
        raise ValueError(f"expected types as a list of job types, got the string {types!r}")
    if columns is not None and not isinstance(columns, Mapping):
        raise ValueError(f"expected columns as a mapping of header to source, got {columns!r}")
    if email is not None and not isinstance(email, Mapping):
        raise ValueError(f"expected email as an abalonemail email config object, got {email!r}")
    try:
        return ReportConfig(
            report=name,
            days=days,
            include_today=include_today,
            columns=dict(columns) if columns is not None else None,
            types=list(types) if types is not None else None,
            email=dict(email) if email is not None else None,
            send_empty=send_empty,
            email_service=email_service,
            email_layout=email_layout,
        )
    except ValidationError as error:
        raise ValueError(f"report {name!r}: {_message(error)}") from None


def _register(service: Service, entry: CronEntry, timeout: float) -> CronEntry:
    """Register the report *entry*'s work function and cron entry on *service*,
    or nothing if either is taken (:class:`ValueError`)."""
    if any(existing.name == entry.name for existing in entries_of(service)):
        raise ValueError(f"a cron entry or report named {entry.name!r} already exists")
    if service.worker_for(entry.type) is not None:
        raise ValueError(
            f"job type {entry.type!r} already has a work function; pass type= to add_report"
        )
    if not timeout > 0:
        raise ValueError(f"expected timeout > 0 seconds, got {timeout!r}")
    service.on(
        entry.type,
        timeout,
        run_report,
        config=ReportConfig,
        retry_on=(OADATransportError, ServerError),
    )
    return add_entry(service, entry.name, entry.schedule, type=entry.type, config=entry.config)


def _made_at(job: Job[Any]) -> datetime:
    """The moment a report run stands for: its tick, the time it was asked for by
    hand, or now (so a retried run covers the same days)."""
    cron = job.raw.get("cron")
    if isinstance(cron, Mapping):
        for name in ("tick", "requested"):
            moment = parse_time(cron.get(name))
            if moment is not None:
                return moment.astimezone(UTC)
    return utc_now()


async def queued_layout(oada: OADAClient, service: str, key: str | None) -> LayoutName:
    """The layout a service's own job (list key *key*) was queued in.

    A periodic job reads the day lists of the layout its own job was queued
    in: the service's code or ``oada-jobs run --layout`` may have chosen either.
    """
    pending = get_layout("pending").pending_path(service)
    try:
        await oada.head(f"{pending}/{path_segment(key)}" if key else pending)
    except NotFound:
        return "classic"
    return "pending"


def summary_text(
    service: str, report: str, first: date, last: date, rows: list[TypeSummary]
) -> str:
    """A plain-text summary for the mail body: one line per (type, status)."""
    period = first.isoformat() if first == last else f"{first} to {last}"
    lines = [f"{service} report {report}: jobs finished {period} (UTC)", ""]
    if not rows:
        lines.append("No jobs.")
    for row in rows:
        times = ""
        if row.median is not None and row.max is not None:
            times = f", median {row.median:.2f} s, max {row.max:.2f} s"
        lines.append(f"{row.type} {row.status}: {row.count}{times}")
    return "\n".join(lines) + "\n"


async def _post_email(
    oada: OADAClient,
    job: Job[ReportConfig],
    key: str,
    csv_text: str,
    text: str,
    first: date,
    last: date,
) -> str:
    config = job.config
    assert config.email is not None
    email: JsonObject = dict(config.email)
    period = first.isoformat() if first == last else f"{first}-to-{last}"
    email.setdefault("subject", f"{job.service} report {config.report}: {period}")
    if "text" not in email and "html" not in email:
        email["text"] = text
    attachment: JsonObject = {
        "filename": f"{job.service}-{config.report}-{period}.csv",
        "type": "text/csv",
        "content": base64.b64encode(csv_text.encode()).decode("ascii"),
    }
    # The report's CSV goes first, as abalonemail users of the original expect.
    email["attachments"] = [attachment, *email.get("attachments", [])]
    email_key = f"{key}-email" if _JOB_KEY.fullmatch(f"{key}-email") else None
    if email_key is not None:
        try:
            # A retried run whose mail job was already posted must not mail twice.
            await oada.head(resource_path(f"resources/{email_key}"))
            return f"resources/{email_key}"
        except NotFound:
            pass
    return await post_job(
        oada,
        config.email_service,
        EMAIL_JOB_TYPE,
        email,
        layout=config.email_layout,
        key=email_key,
        extra={"parent": {"_id": job.oada_id}},
    )


async def run_report(job: Job[ReportConfig], ctx: WorkerContext) -> Json:
    """The work function of report jobs (registered by :func:`add_report`).

    Returns ``{"report", "from", "to", "jobs", "summary", "stored", "email"}``:
    the summary rows, the path the report was stored at, and the mail job's
    id (``None`` when no mail was sent).
    """
    config = job.config
    made = _made_at(job)
    first, last = config.period(made.date())
    key = job.key or job.oada_id.removeprefix("resources/")
    layout = await queued_layout(ctx.oada, job.service, job.key)
    sources = list(config.columns.values()) if config.columns else []
    records = await collect_jobs(
        ctx.oada,
        job.service,
        first,
        last,
        layout=layout,
        pointers=[source for source in sources if source.startswith("/")],
    )
    if config.types is not None:
        kept = set(config.types)
        records = [r for r in records if r.type is None or r.type in kept]
    rows = summarize(records)
    out = io.StringIO()
    write_csv(records, out, config.columns)
    csv_text = out.getvalue()
    summary = [asdict(row) for row in rows]
    path = report_path(job.service, config.report, made.date(), key)
    await ctx.oada.put(
        path,
        {
            "report": config.report,
            "service": job.service,
            "job": {"_id": job.oada_id},
            "made": iso(made),
            "from": first.isoformat(),
            "to": last.isoformat(),
            "jobs": len(records),
            "summary": summary,
            "csv": csv_text,
        },
        tree=_reports_tree(layout),
    )
    await ctx.log.info("stored", {"path": path, "jobs": len(records)})
    email_job = None
    if config.email is not None and (records or config.send_empty):
        text = summary_text(job.service, config.report, first, last, rows)
        email_job = await _post_email(ctx.oada, job, key, csv_text, text, first, last)
        await ctx.log.info("emailed", {"job": email_job, "service": config.email_service})
    return {
        "report": config.report,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "jobs": len(records),
        "summary": summary,
        "stored": path,
        "email": email_job,
    }


Service.provide("add_report", add_report)
