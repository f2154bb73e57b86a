"""Reports over finished jobs: counts and durations per type and status.

Reads a service's success and failure day lists (``day-index/<YYYY-MM-DD>``,
either layout) for a range of days, reads every job linked there, and
summarises them:

>>> records = await collect_jobs(oada, "email-service", date(2026, 11, 1), date(2026, 11, 23))  # doctest: +SKIP
>>> for row in summarize(records): print(row.type, row.status, row.count, row.mean)  # doctest: +SKIP

``oada-jobs report`` prints the same (``--json``, ``--csv FILE``).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

import anyio

from .exceptions import NotFound
from .job import parse_time
from .tree import LayoutName, get_layout

if TYPE_CHECKING:
    from .client import OADAClient

__all__ = [
    "CSV_COLUMNS",
    "JobRecord",
    "TypeSummary",
    "collect_jobs",
    "days_between",
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
)


def days_between(start: date, end: date) -> list[date]:
    """Every day from *start* to *end*, both included; refuses reversed or huge ranges."""
    if end < start:
        raise ValueError(f"expected the first day before the last, got {start} .. {end}")
    count = (end - start).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"expected at most {MAX_DAYS} days, got {count} ({start} .. {end})")
    return [start + timedelta(days=n) for n in range(count)]


def _record(key: str, job_id: str, day: str, status: str, data: object) -> JobRecord:
    if not isinstance(data, Mapping):
        return JobRecord(job_id, key, day, status, None, None, None, None, None, 0)
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
    )


async def collect_jobs(
    oada: OADAClient,
    service: str,
    start: date,
    end: date,
    *,
    layout: LayoutName = "classic",
) -> list[JobRecord]:
    """Read every job filed for *service* from *start* to *end* (both included).

    Reads the ``success`` and ``failure`` day lists of *layout*; a day
    without a list has no jobs. A linked job that is gone or not a job is
    still counted (with type ``None``). Sorted by day, status and key.
    """
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
                data: Any = (await oada.get(f"/{job_id}")).data
            except NotFound:
                data = None
        records[index] = _record(key, job_id, day, status, data)

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


def write_csv(records: Iterable[JobRecord], out: IO[str]) -> int:
    """Write *records* as CSV (header :data:`CSV_COLUMNS`) to *out*; returns the row count."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    rows = 0
    for record in records:
        row = asdict(record)
        writer.writerow({name: "" if row[name] is None else row[name] for name in CSV_COLUMNS})
        rows += 1
    return rows
