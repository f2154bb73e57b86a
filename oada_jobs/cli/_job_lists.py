"""A service's job lists as the commands read them: its pending list and its
day lists of successes and failures, one :class:`JobRow` per entry, and the
day lists a finished job is filed in.

Owns reading and describing those lists for display. Must not write to
OADA, nor print: the commands choose what to show and how.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import anyio

from ..client import OADAClient
from ..exceptions import InvalidJob, InvalidKey, NotFound, OADAError
from ..job import Job, parse_time
from ..tree import Layout, resource_path, service_root

__all__ = [
    "STYLE",
    "JobLists",
    "JobRow",
    "filed_paths",
    "finished_at",
    "read_job_lists",
    "status_text",
]

#: Status colours in tables.
STYLE = {
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


def status_text(status: str | None) -> str:
    """*status* in its table colour (``?`` when unknown)."""
    if status is None:
        return "[dim]?[/]"
    return f"[{STYLE.get(status, 'white')}]{status}[/]"


@dataclass(frozen=True, slots=True)
class JobLists:
    """What ``jobs list`` shows: the newest rows of each list, and the day of
    each day list read (``None`` when the service filed none yet)."""

    #: Entries in the pending list, all of them (``pending`` holds the newest).
    pending_count: int
    pending: list[JobRow]
    success_day: str | None
    success: list[JobRow]
    failure_day: str | None
    failure: list[JobRow]


async def read_job_lists(
    oada: OADAClient, layout: Layout, service: str, day: str | None, limit: int
) -> JobLists:
    """The *limit* newest jobs of each list of *service*: pending, and the
    successes and failures of *day* (default: the latest day filed)."""
    pending = _entries(await _get_or_none(oada, layout.pending_path(service)))
    pending_rows = await _rows(oada, "pending", pending[-limit:])
    success_day, success = await _finished(oada, layout, service, "success", day, limit)
    failure_day, failure = await _finished(oada, layout, service, "failure", day, limit)
    return JobLists(len(pending), pending_rows, success_day, success, failure_day, failure)


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
