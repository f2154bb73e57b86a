"""Finished jobs read from a service's day lists: records, summaries and CSV.

Reads a service's success and failure day lists (``day-index/<YYYY-MM-DD>``,
either layout) for a range of days, reads every job linked there, and turns
each into a :class:`JobRecord`; :func:`summarize` gives counts and durations
per type and status, :func:`write_csv` one CSV row per job.

Owns the records, their summaries and CSV; reads through the client only.
Must not touch the service or cron (:mod:`oada_jobs.reports` builds scheduled
reports on top, and re-exports these names).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import IO, Any

import anyio

from . import _pointer
from .client import OADAClient
from .exceptions import InvalidKey, NotFound, OADAStatusError
from .job import parse_time
from .tree import LayoutName, get_layout, resource_path

__all__ = [
    "CSV_COLUMNS",
    "MAX_DAYS",
    "READ_CONCURRENCY",
    "JobRecord",
    "TypeSummary",
    "collect_jobs",
    "days_between",
    "job_record",
    "resolve_pointer",
    "summarize",
    "write_csv",
]

#: Longest day range a report reads (a guard against a typo like 2062).
MAX_DAYS = 366
#: Jobs read at once.
READ_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One finished job as a report sees it."""

    #: ``resources/<key>``.
    id: str
    #: Its key in the day list.
    key: str
    #: The day list it is filed in (``YYYY-MM-DD``).
    day: str
    #: ``success`` or ``failure`` (the list it is filed in).
    status: str
    #: The job type (``None`` when the linked resource is not a readable job).
    type: str | None
    #: ``result.failType`` of a failed job.
    fail_type: str | None
    #: Time of the first ``started`` update (ISO), if any.
    started: str | None
    #: Time of the ``success``/``failure`` update (ISO), if any.
    finished: str | None
    #: ``finished - started`` in seconds, when both are known.
    duration: float | None
    #: How many times a worker started the job.
    tries: int
    #: Who posted the job (its ``createdBy``, ``users/<id>``), when recorded.
    created_by: str | None = None
    #: Values picked from the job by JSON pointer (``collect_jobs(pointers=...)``);
    #: a pointer that does not resolve is missing here.
    picked: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TypeSummary:
    """Counts and durations (seconds) of the jobs of one type and status."""

    type: str
    status: str
    count: int
    #: Jobs of the group whose duration is known (the statistics cover these).
    timed: int
    mean: float | None
    median: float | None
    p95: float | None
    max: float | None


#: The columns of :func:`write_csv`, in order.
CSV_COLUMNS = (
    "id",
    "key",
    "day",
    "status",
    "type",
    "fail_type",
    "started",
    "finished",
    "duration",
    "tries",
    "created_by",
)


def days_between(start: date, end: date) -> list[date]:
    """Every day from *start* to *end*, both included; refuses reversed or huge ranges."""
    if end < start:
        raise ValueError(f"expected the first day before the last, got {start} .. {end}")
    count = (end - start).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"expected at most {MAX_DAYS} days, got {count} ({start} .. {end})")
    return [start + timedelta(days=n) for n in range(count)]


def resolve_pointer(data: object, pointer: str) -> tuple[bool, Any]:
    """Follow the JSON pointer (RFC 6901) *pointer* into *data*: ``(found, value)``."""
    return _pointer.resolve(data, pointer)


def job_record(
    key: str, job_id: str, day: str, status: str, data: object, pointers: Iterable[str] = ()
) -> JobRecord:
    """The finished job *data* (filed under *key* on *day* as *status*) as reports count it.

    *pointers* are JSON pointers whose values are kept in ``picked``.
    """
    if not isinstance(data, Mapping):
        return JobRecord(job_id, key, day, status, None, None, None, None, None, 0)
    picked = {}
    for pointer in pointers:
        found, value = resolve_pointer(data, pointer)
        if found:
            picked[pointer] = value
    job_type = data.get("type") if isinstance(data.get("type"), str) else None
    result = data.get("result")
    fail_type = None
    if isinstance(result, Mapping) and isinstance(result.get("failType"), str):
        fail_type = result["failType"]
    started: datetime | None = None
    finished: datetime | None = None
    updates = data.get("updates")
    if isinstance(updates, Mapping):
        # Update keys are time-ordered; the times inside say when.
        for _key, update in sorted(updates.items()):
            if not isinstance(update, Mapping):
                continue
            moment = parse_time(update.get("time"))
            if moment is None:
                continue
            if update.get("status") == "started" and started is None:
                started = moment
            elif update.get("status") in ("success", "failure"):
                finished = moment
    duration = None
    if started is not None and finished is not None and finished >= started:
        duration = (finished - started).total_seconds()
    tries = data.get("tries")
    return JobRecord(
        id=job_id,
        key=key,
        day=day,
        status=status,
        type=job_type,
        fail_type=fail_type,
        started=started.isoformat() if started else None,
        finished=finished.isoformat() if finished else None,
        duration=duration,
        tries=tries if isinstance(tries, int) and not isinstance(tries, bool) else 0,
        created_by=created_by if isinstance(created_by := data.get("createdBy"), str) else None,
        picked=picked,
    )


async def collect_jobs(
    oada: OADAClient,
    service: str,
    start: date,
    end: date,
    *,
    layout: LayoutName = "classic",
    pointers: Iterable[str] = (),
) -> list[JobRecord]:
    """Read every job filed for *service* from *start* to *end* (both included).

    Reads the ``success`` and ``failure`` day lists of *layout*; a day
    without a list has no jobs. A linked job that is gone, that the server
    refuses to give (any error status), or that is not a job is still
    counted (with type ``None``). Sorted by day, status and key.

    *pointers* are JSON pointers into each job (``"/config/to"``); their
    values land in :attr:`JobRecord.picked`.
    """
    wanted = list(pointers)
    chosen = get_layout(layout)
    links: list[tuple[str, str, str, str]] = []
    for day in days_between(start, end):
        for status in ("success", "failure"):
            path = chosen.day_index_path(service, status, day)
            try:
                listing = (await oada.get(path)).data
            except NotFound:
                continue
            if not isinstance(listing, Mapping):
                continue
            for key, link in listing.items():
                if key.startswith("_") or not isinstance(link, Mapping):
                    continue
                job_id = link.get("_id")
                if isinstance(job_id, str):
                    links.append((key, job_id, day.isoformat(), status))
    records: list[JobRecord | None] = [None] * len(links)
    limiter = anyio.CapacityLimiter(READ_CONCURRENCY)

    async def read(index: int, key: str, job_id: str, day: str, status: str) -> None:
        async with limiter:
            try:
                data: Any = (await oada.get(resource_path(job_id))).data
            except (OADAStatusError, InvalidKey):
                # The server answered about this one job (gone, forbidden,
                # broken): count it as unknown rather than lose the report.
                # No answer at all (a transport error) still fails the read.
                data = None
        records[index] = job_record(key, job_id, day, status, data, wanted)

    async with anyio.create_task_group() as group:
        for index, (key, job_id, day_name, status) in enumerate(links):
            group.start_soon(read, index, key, job_id, day_name, status)
    done = [record for record in records if record is not None]
    return sorted(done, key=lambda r: (r.day, r.status, r.key))


def _percentile(sorted_values: list[float], fraction: float) -> float:
    # Nearest-rank: a value that actually occurred.
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


def summarize(records: Iterable[JobRecord]) -> list[TypeSummary]:
    """Group *records* by (type, status); unreadable jobs count under type ``?``."""
    groups: dict[tuple[str, str], list[JobRecord]] = {}
    for record in records:
        groups.setdefault((record.type or "?", record.status), []).append(record)
    summaries = []
    for (job_type, status), members in sorted(groups.items()):
        durations = sorted(r.duration for r in members if r.duration is not None)
        summaries.append(
            TypeSummary(
                type=job_type,
                status=status,
                count=len(members),
                timed=len(durations),
                mean=statistics.fmean(durations) if durations else None,
                median=statistics.median(durations) if durations else None,
                p95=_percentile(durations, 0.95) if durations else None,
                max=durations[-1] if durations else None,
            )
        )
    return summaries


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Numbers, booleans, objects and lists as JSON text (true, 1.5, {"a": 1}).
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def write_csv(
    records: Iterable[JobRecord], out: IO[str], columns: Mapping[str, str] | None = None
) -> int:
    """Write *records* as CSV to *out*; returns the row count.

    Without *columns* the header is :data:`CSV_COLUMNS`. With *columns*
    (header → source) each source is a :data:`CSV_COLUMNS` name or a JSON
    pointer the records were collected with (``collect_jobs(pointers=...)``);
    empty cells for unknown values, objects and lists as JSON text.
    """
    chosen = dict(columns) if columns is not None else {name: name for name in CSV_COLUMNS}
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(chosen))
    rows = 0
    for record in records:
        row = {name: getattr(record, name) for name in CSV_COLUMNS}
        writer.writerow(
            [
                _cell(record.picked.get(source) if source.startswith("/") else row[source])
                for source in chosen.values()
            ]
        )
        rows += 1
    return rows
