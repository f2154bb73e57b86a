"""What the dashboard reads from OADA: services, queues, job lists and jobs.

Owns every OADA read a page makes and the small cache of finished jobs. It
reads through the public client and the layout helpers only; it never
writes (actions live in ``app.py``) and knows nothing of HTML.

May use the client and the framework's read helpers; must not write to OADA
(actions live in the app).
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import anyio

from ..client import OADAClient
from ..exceptions import InvalidJob, NotFound, OADAStatusError
from ..job import Job, JobStatus
from ..reports import JobRecord, TypeSummary, days_between, job_record, summarize
from ..requester import Progress, latest_progress
from ..tree import Layout, get_layout, service_root, validate_service_name
from .config import DashboardConfig

__all__ = [
    "JobDetail",
    "JobReader",
    "PendingRow",
    "QueueRow",
    "ServiceOverview",
    "ServicePage",
    "check_job_key",
    "job_key_of",
]

# A job key is one safe path segment (what post_job and OADA POSTs make).
_JOB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


def check_job_key(key: str) -> str:
    """Return *key* if it can be a job key (``resources/<key>``), else raise :class:`ValueError`."""
    if not isinstance(key, str) or not _JOB_KEY.fullmatch(key):
        raise ValueError(f"expected a job key of letters, digits and '._~-', got {key!r}")
    return key


def job_key_of(link: object) -> str | None:
    """The job key of a ``{"_id": "resources/<key>"}`` link, if it is one."""
    job_id = link.get("_id") if isinstance(link, Mapping) else None
    if not isinstance(job_id, str) or not job_id.startswith("resources/"):
        return None
    key = job_id.removeprefix("resources/")
    return key if _JOB_KEY.fullmatch(key) else None


def _keys(listing: object) -> list[str]:
    if not isinstance(listing, Mapping):
        return []
    return sorted(k for k in listing if isinstance(k, str) and not k.startswith("_"))


@dataclass(frozen=True, slots=True)
class ServiceOverview:
    """One line of the overview page."""

    name: str
    layout: str
    pending: int
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A store the service takes jobs from (tokens are never read into this)."""

    key: str
    domain: str | None
    #: ``True``/``False`` when a service in this process says; ``None`` when unknown.
    watching: bool | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A job in the pending list, as read now."""

    key: str
    type: str | None
    status: str
    progress: Progress | None
    tries: int
    worker: str | None
    updated: str | None
    problem: str | None = None


@dataclass(slots=True)
class ServicePage:
    """Everything a service page shows."""

    name: str
    layout: Layout
    start: date
    end: date
    queues: list[QueueRow]
    pending_total: int
    pending: list[PendingRow]
    records: list[JobRecord]
    summaries: list[TypeSummary]
    fail_types: list[tuple[str, int]]
    workers: list[str] = field(default_factory=list)

    @property
    def running(self) -> int:
        return sum(
            row.status in (JobStatus.RUNNING, JobStatus.CANCEL_REQUESTED) for row in self.pending
        )

    @property
    def waiting(self) -> int:
        return self.pending_total - self.running

    @property
    def succeeded(self) -> int:
        return sum(record.status == "success" for record in self.records)

    @property
    def failed(self) -> int:
        return sum(record.status == "failure" for record in self.records)

    def newest_finished(self, limit: int) -> list[JobRecord]:
        ordered = sorted(self.records, key=lambda r: (r.finished or "", r.key), reverse=True)
        return ordered[:limit]


@dataclass(frozen=True, slots=True)
class JobDetail:
    """One job for its page."""

    key: str
    data: Mapping[str, Any]
    job: Job[Any] | None
    problem: str | None
    progress: Progress | None
    updates: list[tuple[str, Mapping[str, Any]]]
    parent: str | None
    children: list[str]
    retry_of: str | None

    @property
    def status(self) -> str:
        if self.job is None:
            return "invalid"
        return self.job.status or JobStatus.PENDING.value

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.finished

    @property
    def cancellable(self) -> bool:
        return self.job is not None and not self.job.finished

    @property
    def retryable(self) -> bool:
        return self.job is not None and self.job.status == JobStatus.FAILURE.value


def _last_update(updates: Mapping[str, Any]) -> str | None:
    times = [
        update["time"]
        for update in updates.values()
        if isinstance(update, Mapping) and isinstance(update.get("time"), str)
    ]
    return max(times) if times else None


class JobReader:
    """Reads pages' data through one client, with a cache of finished jobs.

    A finished job is linked into its day list with a versioned link; while
    that link's ``_rev`` is unchanged the job is not read again.
    """

    def __init__(self, oada: OADAClient, config: DashboardConfig) -> None:
        self.oada = oada
        self.config = config
        self._finished: OrderedDict[tuple[str, object, str, str], JobRecord] = OrderedDict()
        self._limiter = anyio.CapacityLimiter(config.read_concurrency)

    async def _get(self, path: str) -> Any:
        try:
            return (await self.oada.get(path)).data
        except NotFound:
            return None

    async def layout(self, service: str) -> Layout:
        """The layout *service* uses: ``pending`` when it has ``jobs/pending``, else ``classic``."""
        pending = get_layout("pending")
        try:
            await self.oada.head(pending.pending_path(service))
        except NotFound:
            return get_layout("classic")
        return pending

    async def services(self) -> list[str]:
        """Names of the services under ``/bookmarks/services`` (valid names only)."""
        names = []
        for key in _keys(await self._get("/bookmarks/services")):
            try:
                names.append(validate_service_name(key))
            except ValueError:
                continue
        return names[: self.config.max_services]

    async def overview(self, today: date) -> list[ServiceOverview]:
        """Pending and today's finished counts of every service."""
        names = await self.services()
        rows: list[ServiceOverview | None] = [None] * len(names)

        async def one(index: int, name: str) -> None:
            async with self._limiter:
                layout = await self.layout(name)
                pending = len(_keys(await self._get(layout.pending_path(name))))
                succeeded = len(
                    _keys(await self._get(layout.day_index_path(name, "success", today)))
                )
                failed = len(_keys(await self._get(layout.day_index_path(name, "failure", today))))
            rows[index] = ServiceOverview(name, layout.name, pending, succeeded, failed)

        async with anyio.create_task_group() as group:
            for index, name in enumerate(names):
                group.start_soon(one, index, name)
        return [row for row in rows if row is not None]

    async def pending_keys(self, service: str, layout: Layout) -> list[str]:
        """Keys of the pending list, oldest first."""
        return _keys(await self._get(layout.pending_path(service)))

    async def watch_paths(self, service: str) -> list[str]:
        """What a live service page watches: lists, queues and the first pending jobs."""
        layout = await self.layout(service)
        root = service_root(service)
        paths = [
            root,
            layout.queues_path(service),
            layout.pending_path(service),
            f"{root}/{layout.success}",
            f"{root}/{layout.failure}",
        ]
        if layout.name == "pending":
            paths.append(f"{root}/jobs")
        keys = (await self.pending_keys(service, layout))[: self.config.max_watched_jobs]
        return paths + [f"/resources/{key}" for key in keys if _JOB_KEY.fullmatch(key)]

    async def overview_paths(self) -> list[str]:
        """What a live overview watches: the services and each one's pending list."""
        paths = ["/bookmarks/services"]
        for name in await self.services():
            paths.append((await self.layout(name)).pending_path(name))
        return paths

    async def queues(self, service: str, known: Mapping[str, Any]) -> list[QueueRow]:
        """The service's own store and its ``queues`` entries; *known* are live queues by key."""
        own = known.get("_default")
        rows = [QueueRow("_default", self.oada.domain, _watching(own))]
        listing = await self._get(get_layout("classic").queues_path(service))
        for key in _keys(listing):
            value = listing[key]
            if isinstance(value, Mapping) and "_id" in value and "domain" not in value:
                linked = await self._get(f"/{value['_id']}") if job_key_of(value) else None
                value = linked
            domain = value.get("domain") if isinstance(value, Mapping) else None
            problem = None if isinstance(domain, str) else "no domain"
            rows.append(
                QueueRow(
                    key,
                    domain if isinstance(domain, str) else None,
                    _watching(known.get(key)),
                    problem,
                )
            )
        return rows

    async def _pending_row(self, key: str) -> PendingRow:
        job_id = f"resources/{key}"
        try:
            data = await self._get(f"/{job_id}")
            if data is None:
                return PendingRow(key, None, "missing", None, 0, None, None, "no such resource")
            job = Job.from_resource(data, oada_id=job_id, key=key)
        except InvalidJob as error:
            return PendingRow(key, None, "invalid", None, 0, None, None, str(error))
        except OADAStatusError as error:
            return PendingRow(key, None, "unreadable", None, 0, None, None, error.message)
        return PendingRow(
            key,
            job.type,
            job.status or JobStatus.PENDING.value,
            latest_progress(job),
            job.tries,
            job.lease.worker if job.lease is not None and not job.lease.expired() else None,
            _last_update(job.updates),
        )

    async def _finished_records(
        self, service: str, layout: Layout, days: list[date]
    ) -> list[JobRecord]:
        links: list[tuple[str, str, object, str, str]] = []
        for day in days:
            for status in ("success", "failure"):
                listing = await self._get(layout.day_index_path(service, status, day))
                for key in _keys(listing):
                    link = listing[key]
                    if job_key_of(link) is None:
                        continue
                    links.append((key, link["_id"], link.get("_rev"), day.isoformat(), status))
        records: list[JobRecord | None] = [None] * len(links)

        async def read(
            index: int, key: str, job_id: str, rev: object, day: str, status: str
        ) -> None:
            cache_key = (job_id, rev, day, status)
            cached = self._finished.get(cache_key) if rev is not None else None
            if cached is not None:
                self._finished.move_to_end(cache_key)
                records[index] = cached
                return
            async with self._limiter:
                try:
                    data = await self._get(f"/{job_id}")
                except OADAStatusError:
                    data = None
            record = job_record(key, job_id, day, status, data)
            records[index] = record
            if rev is not None and self.config.job_cache_entries:
                self._finished[cache_key] = record
                while len(self._finished) > self.config.job_cache_entries:
                    self._finished.popitem(last=False)

        async with anyio.create_task_group() as group:
            for index, link in enumerate(links):
                group.start_soon(read, index, *link)
        return [record for record in records if record is not None]

    async def service_page(
        self, service: str, start: date, end: date, known: Mapping[str, Any]
    ) -> ServicePage:
        """Read what the page of *service* shows for the days *start* .. *end*."""
        layout = await self.layout(service)
        queues = await self.queues(service, known)
        keys = await self.pending_keys(service, layout)
        shown = keys[: self.config.max_list_jobs]
        pending: list[PendingRow | None] = [None] * len(shown)

        async def fill(index: int, key: str) -> None:
            async with self._limiter:
                pending[index] = await self._pending_row(key)

        async with anyio.create_task_group() as group:
            for index, key in enumerate(shown):
                if _JOB_KEY.fullmatch(key):
                    group.start_soon(fill, index, key)
        rows = [row for row in pending if row is not None]
        records = await self._finished_records(service, layout, days_between(start, end))
        fail_types = Counter(
            record.fail_type or "(untyped)" for record in records if record.status == "failure"
        )
        workers = sorted({row.worker for row in rows if row.worker is not None})
        return ServicePage(
            name=service,
            layout=layout,
            start=start,
            end=end,
            queues=queues,
            pending_total=len(keys),
            pending=rows,
            records=records,
            summaries=summarize(records),
            fail_types=sorted(fail_types.items(), key=lambda item: (-item[1], item[0])),
            workers=workers,
        )

    async def job(self, key: str) -> JobDetail | None:
        """The job ``resources/<key>``; ``None`` when it does not exist."""
        job_id = f"resources/{check_job_key(key)}"
        response_data = await self._get(f"/{job_id}")
        if response_data is None:
            return None
        data: Mapping[str, Any] = response_data if isinstance(response_data, Mapping) else {}
        job: Job[Any] | None
        try:
            job = Job.from_resource(response_data, oada_id=job_id, key=key)
            problem = None
        except InvalidJob as error:
            job, problem = None, str(error)
        raw_updates = data.get("updates")
        updates = []
        if isinstance(raw_updates, Mapping):
            updates = [
                (update_key, update)
                for update_key, update in sorted(raw_updates.items())
                if isinstance(update, Mapping)
            ]
        children_raw = data.get("children")
        children = []
        if isinstance(children_raw, Mapping):
            children = sorted(
                child for child in (job_key_of(v) for v in children_raw.values()) if child
            )
        return JobDetail(
            key=key,
            data=data,
            job=job,
            problem=problem,
            progress=latest_progress(job) if job is not None else None,
            updates=updates,
            parent=job_key_of(data.get("parent")),
            children=children,
            retry_of=job_key_of(data.get("retryOf")),
        )


def _watching(queue: Any) -> bool | None:
    watching = getattr(queue, "watching", None)
    return watching if isinstance(watching, bool) else None
