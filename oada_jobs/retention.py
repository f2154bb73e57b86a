"""Retention: remove finished jobs older than some days, per status.

Day lists grow forever otherwise. :func:`purge` removes, for each status
given, every day list older than its cutoff and the finished jobs of this
service linked there: the job resources, the typed-failure day lists of
those days, the day lists themselves and their links::

    report = await purge(oada, "email-service", older_than={"success": 30, "failure": 90})

A service does it on a schedule with ``service.retain(success_days=30,
failure_days=90)``: a periodic job (:mod:`oada_jobs.cron`), so one replica
runs each tick and never two at once. Every purge is logged, counted in
``oada_jobs_purged_jobs_total`` and recorded in the service's
``/bookmarks/services/<name>/retention`` resource (``last``); a dry run
only counts. ``oada-jobs jobs purge`` runs it by hand.

Only what the lists name and the service owns goes: a linked resource that
is not a finished job of this service is unlinked with its day list but
never deleted. Keys read from the lists (days, failure types, job ids) are
hostile input: one that is not a date, a path segment or a job id is left
alone.

Owns purging and the retention component; provides ``service.retain(...)``.
Sits above the service, cron and reports and uses only their public API;
nothing in the framework imports it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from pydantic.alias_generators import to_camel

from .client import OADAClient
from .context import WorkerContext
from .cron import add_entry, entries_of
from .exceptions import BadRequest, Forbidden, InvalidJob, NotFound, OADAStatusError
from .job import Job, iso, utc_now
from .metrics import ServiceMetrics
from .reports import queued_layout
from .service import Service, ServiceState
from .tree import Layout, LayoutName, get_layout, service_root, service_tree_with
from .types import JsonObject

__all__ = [
    "DELETE_CONCURRENCY",
    "ListPurge",
    "PurgeReport",
    "RetentionConfig",
    "add_retention",
    "cutoff_day",
    "purge",
    "retention_path",
]

logger = logging.getLogger("oada_jobs.retention")

#: Job resources deleted at once.
DELETE_CONCURRENCY = 16

Status = Literal["success", "failure"]

_JOB_ID = re.compile(r"resources/[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]{1,200}")


def retention_path(service: str) -> str:
    """``/bookmarks/services/<service>/retention``: the record of the last purges."""
    return f"{service_root(service)}/retention"


def cutoff_day(now: datetime, days: int) -> date:
    """The first day kept: day lists before it are purged (*days* whole days back)."""
    return now.astimezone(UTC).date() - timedelta(days=days)


@dataclass(slots=True)
class ListPurge:
    """What a purge did to the day lists of one status."""

    #: ``success`` or ``failure``.
    status: str
    #: Day lists before this day were purged (``YYYY-MM-DD``).
    cutoff: str
    #: The day lists removed (or, in a dry run, to be removed).
    days: list[str] = field(default_factory=list)
    #: Job resources deleted (or to be deleted).
    jobs: int = 0
    #: Linked resources unlinked but not deleted (not a finished job of this service).
    kept: int = 0
    #: Typed-failure day lists removed with them.
    typed_days: int = 0

    def to_json(self) -> JsonObject:
        return {
            "cutoff": self.cutoff,
            "days": list(self.days),
            "jobs": self.jobs,
            "kept": self.kept,
            "typedDays": self.typed_days,
        }


@dataclass(slots=True)
class PurgeReport:
    """What one purge did (see :func:`purge`)."""

    service: str
    #: When it ran (ISO).
    at: str
    dry_run: bool
    #: Who ran it: ``"by retention"``, ``"by oada-jobs jobs purge"``...
    by: str
    lists: list[ListPurge] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        """Job resources deleted over all statuses."""
        return sum(item.jobs for item in self.lists)

    def to_json(self) -> JsonObject:
        return {
            "at": self.at,
            "dryRun": self.dry_run,
            "by": self.by,
            "lists": {item.status: item.to_json() for item in self.lists},
        }


def _days(listing: object, before: date) -> list[str]:
    """The day keys of a ``day-index`` before *before*, oldest first."""
    if not isinstance(listing, Mapping):
        return []
    found = []
    for key in listing:
        try:
            day = date.fromisoformat(key)
        except (TypeError, ValueError):
            continue
        if day.isoformat() == key and day < before:
            found.append(key)
    return sorted(found)


async def _get(oada: OADAClient, path: str) -> Any:
    try:
        return (await oada.get(path)).data
    except NotFound:
        return None


async def _remove_day_list(oada: OADAClient, day_path: str) -> None:
    """Unlink the day list at *day_path*, then delete its resource."""
    try:
        response = await oada.head(day_path)
    except NotFound:
        return
    await oada.delete(day_path)  # a path ending on a link removes the link only
    resource = response.resource_id
    if resource is not None and _JOB_ID.fullmatch(resource):
        await oada.delete(f"/{resource}")


class _Purger:
    """One purge of one service's lists (see :func:`purge`)."""

    def __init__(self, oada: OADAClient, service: str, layout: Layout, dry_run: bool) -> None:
        self.oada = oada
        self.service = service
        self.layout = layout
        self.dry_run = dry_run
        self.root = service_root(service)
        self.limiter = anyio.CapacityLimiter(DELETE_CONCURRENCY)

    async def status(self, status: Status, cutoff: date) -> ListPurge:
        result = ListPurge(status, cutoff.isoformat())
        base = f"{self.root}/{self.layout.success if status == 'success' else self.layout.failure}"
        for day in _days(await _get(self.oada, f"{base}/day-index"), cutoff):
            await self._day(f"{base}/day-index/{day}", result)
            result.days.append(day)
        if status == "failure":
            await self._typed(cutoff, result)
        return result

    async def _day(self, day_path: str, result: ListPurge) -> None:
        listing = await _get(self.oada, day_path)
        links = []
        if isinstance(listing, Mapping):
            for key, link in listing.items():
                if key.startswith("_") or not isinstance(link, Mapping):
                    continue
                job_id = link.get("_id")
                if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):
                    links.append(job_id)
        async with anyio.create_task_group() as group:
            for job_id in links:
                group.start_soon(self._job, job_id, result)
        if not self.dry_run:
            await _remove_day_list(self.oada, day_path)

    async def _job(self, job_id: str, result: ListPurge) -> None:
        async with self.limiter:
            try:
                job = Job.from_resource((await self.oada.get(f"/{job_id}")).data, oada_id=job_id)
            except (NotFound, Forbidden, BadRequest, InvalidJob):
                result.kept += 1
                return
            if job.service != self.service or not job.finished:
                result.kept += 1
                return
            result.jobs += 1
            if not self.dry_run:
                await self.oada.delete(f"/{job_id}")

    async def _typed(self, cutoff: date, result: ListPurge) -> None:
        """Remove the typed-failure day lists before *cutoff* (their jobs went with the
        failure list of the same day)."""
        base = f"{self.root}/{self.layout.typed_failure}"
        types = await _get(self.oada, base)
        if not isinstance(types, Mapping):
            return
        for fail_type in sorted(types):
            if (
                fail_type.startswith("_")
                or fail_type in (".", "..")
                or not _SEGMENT.fullmatch(fail_type)
            ):
                continue
            index = await _get(self.oada, f"{base}/{fail_type}/day-index")
            for day in _days(index, cutoff):
                result.typed_days += 1
                if not self.dry_run:
                    await _remove_day_list(self.oada, f"{base}/{fail_type}/day-index/{day}")


async def purge(
    oada: OADAClient,
    service: str,
    *,
    older_than: Mapping[str, int],
    layout: LayoutName | Layout = "classic",
    now: datetime | None = None,
    dry_run: bool = False,
    by: str = "by hand",
    metrics: ServiceMetrics | None = None,
) -> PurgeReport:
    """Remove *service*'s finished jobs filed more than *older_than* days ago.

    *older_than* maps ``"success"``/``"failure"`` to whole days: the day
    lists of days before :func:`cutoff_day` go, with the finished jobs of
    this service linked there (and, for failures, the typed-failure day
    lists of those days). With *dry_run* nothing is written; the report says
    what would go. Otherwise the report is logged, counted in *metrics* and
    recorded as ``last`` in :func:`retention_path`.

    >>> report = await purge(oada, "email-service", older_than={"success": 30})  # doctest: +SKIP
    """
    statuses: dict[Status, int] = {}
    for status, days in older_than.items():
        if status not in ("success", "failure"):
            raise ValueError(f"expected status 'success' or 'failure', got {status!r}")
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ValueError(f"expected {status} days as an integer >= 0, got {days!r}")
        statuses["success" if status == "success" else "failure"] = days
    moment = now or utc_now()
    chosen = get_layout(layout)
    purger = _Purger(oada, service, chosen, dry_run)
    report = PurgeReport(service, iso(moment), dry_run, by)
    for status, days in statuses.items():
        report.lists.append(await purger.status(status, cutoff_day(moment, days)))
    for item in report.lists:
        logger.info(
            "retention %s: %s%s %d %s job(s) in %d day list(s) before %s (%d linked kept)",
            service,
            "would remove" if dry_run else "removed",
            "" if dry_run else f" {by}:",
            item.jobs,
            item.status,
            len(item.days),
            item.cutoff,
            item.kept,
        )
        if metrics is not None and not dry_run:
            metrics.jobs_purged(item.status, item.jobs)
    if not dry_run:
        await oada.put(
            retention_path(service),
            {"last": report.to_json()},
            tree=service_tree_with(chosen, "retention"),
        )
    return report


class RetentionConfig(BaseModel):
    """The config of a retention job: days kept per status (camelCase in JSON)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    #: Successful jobs filed more than this many days ago are removed.
    success_days: StrictInt | None = Field(default=None, ge=0)
    #: Failed jobs filed more than this many days ago are removed.
    failure_days: StrictInt | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some(self) -> RetentionConfig:
        if self.success_days is None and self.failure_days is None:
            raise ValueError("give success_days, failure_days or both")
        return self

    def older_than(self) -> dict[str, int]:
        chosen = {"success": self.success_days, "failure": self.failure_days}
        return {status: days for status, days in chosen.items() if days is not None}


def add_retention(
    service: Service,
    *,
    success_days: int | None = None,
    failure_days: int | None = None,
    schedule: str = "17 3 * * *",
    timezone: str = "UTC",
    name: str = "retention",
    type: str | None = None,
    timeout: float = 3600.0,
) -> None:
    """Purge *service*'s old finished jobs on a cron *schedule* (``service.retain``).

    Registers a work function for *type* (default ``retention-<name>``) and
    a cron entry *name* posting it; each run is :func:`purge` with the days
    given, recorded on its job (the result is the report) and in
    :func:`retention_path`. One replica runs each tick, never two at once.

    >>> service.retain(success_days=30, failure_days=90)  # doctest: +SKIP
    """
    if service.state is not ServiceState.CREATED:
        raise RuntimeError("add retention before the service starts")
    config = RetentionConfig(success_days=success_days, failure_days=failure_days)
    job_type = type if type is not None else f"retention-{name}"
    if any(existing.name == name for existing in entries_of(service)):
        raise ValueError(f"a cron entry named {name!r} already exists")
    if service.worker_for(job_type) is not None:
        raise ValueError(f"job type {job_type!r} already has a work function; pass type=")
    metrics = service.metrics

    async def run_retention(job: Job[RetentionConfig], ctx: WorkerContext) -> JsonObject:
        layout = await queued_layout(ctx.oada, job.service, job.key)
        report = await purge(
            ctx.oada,
            job.service,
            older_than=job.config.older_than(),
            layout=layout,
            by="by retention",
            metrics=metrics,
        )
        return report.to_json()

    service.on(
        job_type,
        timeout,
        run_retention,
        config=RetentionConfig,
        retry_on=(OADAStatusError,),
    )
    add_entry(
        service,
        name,
        schedule,
        type=job_type,
        config=config.model_dump(mode="json", by_alias=True, exclude_none=True),
        timezone=timezone,
    )


Service.provide("retain", add_retention)
