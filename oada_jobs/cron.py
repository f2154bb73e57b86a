"""Periodic jobs: post a job of a given type on a cron schedule.

>>> service.cron("cleanup", "*/5 * * * *", config={"older_than_days": 30})  # doctest: +SKIP

Every tick becomes an ordinary job, posted into the service's own pending
list, so it runs, retries, times out and is filed like any other job.

Several replicas of a service may run the same schedule; exactly one posts
each tick. Before posting, a replica records the tick in the service's cron
state resource (``/bookmarks/services/<name>/cron``) with ``If-Match`` on the
ETag it read: of replicas that read the same state only one write succeeds,
the others get 412, read again and see the tick is taken. The job itself has
a key fixed by (service, entry, tick), so the winner retrying a failed post
never makes a second job.

The same conditional write keeps an entry to one run at a time over all
replicas: unless the entry overlaps, a tick whose previous tick's job has not
finished is recorded as skipped (``skipped: {tick, running, count}``) instead
of posted. A newer ``version`` of an entry recorded there stops replicas with
an older one from posting it. Schedules have five fields or six (seconds
first) and are read in an IANA time zone.

A tick is posted at most once: ticks missed while no replica ran are not
caught up, and a replica that dies between recording a tick and posting its
job loses that tick.

An entry can also be run now, outside its schedule (:func:`post_now`, what
``oada-jobs cron run`` does): the job gets a key of its own
(``cron-<service>-<entry>-manual-<ksuid>``) and says it was started by hand,
so it never takes the place of a tick's job nor stops a tick from posting.

Owns :class:`CronScheduler` (posting ticks), the cron state resource and
:class:`CronTable`, the service component that holds a service's entries and
runs them; provides ``service.cron(...)``. A :class:`CronEntry` and its job
keys are :mod:`oada_jobs.cron_entry`'s (importable from here too). Sits above
the service and uses only its public API; the service never imports it.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from ._retry import retry
from .client import OADAClient
from .cron_entry import CronEntry, cron_job_key, manual_job_key, utc
from .exceptions import (
    BadRequest,
    DuplicateJob,
    Forbidden,
    InvalidJob,
    NotFound,
    OADAError,
    PreconditionFailed,
)
from .job import Job, JobOptions, iso, new_update, utc_now
from .requester import post_job
from .service import Service, ServiceState
from .tree import JOBS_TYPE, LayoutName, service_root, service_tree_with
from .types import JsonObject, Tree

__all__ = [
    "CRON",
    "CronEntry",
    "CronScheduler",
    "CronTable",
    "add_entry",
    "cron_job_key",
    "entries_of",
    "entry_named",
    "manual_job_key",
    "post_now",
    "read_state",
    "run_cron",
]

logger = logging.getLogger("oada_jobs.cron")

# A job id the cron state may name (hostile input: it becomes a request path).
_JOB_ID = re.compile(r"resources/[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


#: Reads of the cron state before a replica gives a tick up (it kept changing).
STATE_READS = 10

#: Clock: the current time, timezone-aware UTC.
Clock = Callable[[], datetime]
#: Sleep for that many seconds (``anyio.sleep`` unless a test injects one).
Sleep = Callable[[float], Awaitable[None]]


def _state_tree(layout: LayoutName) -> Tree:
    return service_tree_with(layout, "cron")


class CronState(Enum):
    """Lifecycle of a :class:`CronScheduler`."""

    #: Made, not yet running.
    CREATED = "created"
    #: Posting ticks.
    RUNNING = "running"
    #: Ended; cannot run again.
    STOPPED = "stopped"


class CronScheduler:
    """Posts the jobs of *entries* for *service* on their schedules.

    Normally a :class:`~oada_jobs.Service` runs one for its ``service.cron``
    entries. *clock* and *sleep* are injectable so tests can step through
    ticks without waiting.

    >>> scheduler = CronScheduler(oada, "cleaner", [CronEntry("cleanup", "*/5 * * * *", "cleanup")])  # doctest: +SKIP
    >>> await task_group.start(scheduler.run)  # doctest: +SKIP
    """

    def __init__(
        self,
        oada: OADAClient,
        service: str,
        entries: list[CronEntry],
        *,
        layout: LayoutName = "classic",
        clock: Clock = utc_now,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"cron entry names must be unique, got {names}")
        self.oada = oada
        self.service = service
        self.entries = list(entries)
        self.layout: LayoutName = layout
        self.state_path = f"{service_root(service)}/cron"
        self._clock = clock
        self._sleep = sleep
        self._state = CronState.CREATED

    @property
    def state(self) -> CronState:
        """Where the scheduler is in its lifecycle."""
        return self._state

    async def ensure_state(self) -> None:
        """Create the cron state resource if it does not exist yet."""
        await self.oada.ensure(self.state_path, {}, tree=_state_tree(self.layout))

    async def post_tick(self, entry: CronEntry, tick: datetime) -> str | None:
        """Post *entry*'s job for *tick* unless another replica already did.

        Returns the job id when this call posted it, ``None`` when the tick
        was already taken, skipped (the previous tick's job has not finished
        and the entry does not overlap; the skip is recorded in the cron
        state) or its unique key is held by another job.
        """
        tick = entry.truncate(tick)
        key = cron_job_key(self.service, entry.name, tick, seconds=entry.seconds)
        if not await self._take(entry, iso(tick), key):
            return None
        extra = {"cron": {"entry": entry.name, "tick": iso(tick)}}
        try:
            return await _post_with_fixed_key(
                self.oada,
                self.service,
                entry,
                layout=self.layout,
                key=key,
                extra=extra,
                options=entry.job_options(tick),
            )
        except DuplicateJob as error:
            logger.warning(
                "cron %s/%s: tick %s not posted: %s", self.service, entry.name, iso(tick), error
            )
            return None

    async def _take(self, entry: CronEntry, stamp: str, key: str) -> bool:
        """Record the tick *stamp* in the cron state; whether this replica posts it.

        ``False`` if it was taken already, if a newer version of the entry
        runs elsewhere, if the previous tick's job is still unfinished (the
        skip is recorded), or if the state kept changing.
        """
        for _attempt in range(STATE_READS):
            try:
                response = await self.oada.get(self.state_path)
            except NotFound:
                # Someone removed the state: make it again and look once more.
                await self.ensure_state()
                continue
            data = response.data if isinstance(response.data, Mapping) else {}
            seen = data.get(entry.name)
            seen = seen if isinstance(seen, Mapping) else {}
            if not self._still_ours(entry, seen, stamp):
                return False
            record, running = await self._record(entry, seen, stamp, key)
            try:
                await self.oada.put(
                    self.state_path,
                    {entry.name: record},
                    content_type=JOBS_TYPE,
                    if_match=response.etag,
                )
            except PreconditionFailed:
                continue  # another replica (or entry) wrote first: look again
            if running is not None:
                logger.warning(
                    "cron %s/%s: skipping tick %s: the job of an earlier tick, %s, has not "
                    "finished (pass overlap=True to run them side by side)",
                    self.service,
                    entry.name,
                    stamp,
                    running,
                )
                return False
            return True
        logger.warning(
            "cron %s/%s: state kept changing; skipping %s", self.service, entry.name, stamp
        )
        return False

    def _still_ours(self, entry: CronEntry, seen: Mapping[str, Any], stamp: str) -> bool:
        """Whether the tick *stamp* is still this replica's to take, by what the
        cron state has *seen* of the entry: not taken yet, by no newer version."""
        last = seen.get("last")
        if isinstance(last, str) and last >= stamp:
            return False
        if entry.outdated_by(seen.get("version")):
            logger.warning(
                "cron %s/%s: version %s of this entry runs elsewhere (this is %s); not posting %s",
                self.service,
                entry.name,
                seen.get("version"),
                entry.version,
                stamp,
            )
            return False
        return True

    async def _record(
        self, entry: CronEntry, seen: Mapping[str, Any], stamp: str, key: str
    ) -> tuple[JsonObject, str | None]:
        """What the cron state is to say of *entry* after the tick *stamp*, and
        the previous tick's job if it has not finished (the tick is skipped)."""
        record: JsonObject = {"last": stamp}
        if entry.version is not None:
            record["version"] = entry.version
            if seen.get("version") != entry.version:
                # A new version of the entry: its schedule from now on.
                record["schedule"] = entry.schedule
                record["timezone"] = entry.timezone
        running = None if entry.overlap else await self._unfinished(seen.get("job"))
        if running is not None:
            skipped = seen.get("skipped")
            count = skipped.get("count") if isinstance(skipped, Mapping) else None
            count = count if isinstance(count, int) and not isinstance(count, bool) else 0
            record["skipped"] = {"tick": stamp, "running": running, "count": count + 1}
        else:
            record["job"] = f"resources/{key}"
        return record, running

    async def _unfinished(self, job_ref: object) -> str | None:
        """*job_ref* (the previous tick's job) if it exists and has not finished."""
        if not isinstance(job_ref, str) or not _JOB_ID.fullmatch(job_ref):
            return None
        try:
            response = await self.oada.get(f"/{job_ref}")
            job = Job.from_resource(response.data, oada_id=job_ref)
        except (NotFound, Forbidden, BadRequest, InvalidJob):
            return None
        return None if job.finished else job_ref

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Post ticks until cancelled; ``task_group.start`` returns once the state exists.

        Starts from the current time: ticks before it are not caught up. When
        the loop falls behind (a slow store), only the latest missed tick of
        an entry is posted.
        """
        if self._state is not CronState.CREATED:
            raise RuntimeError(f"a cron scheduler runs once; this one is {self._state.value}")
        self._state = CronState.RUNNING
        try:
            await self.ensure_state()
            task_status.started()
            now = self._clock()
            due = {entry.name: entry.next_tick(now) for entry in self.entries}
            by_name = {entry.name: entry for entry in self.entries}
            while due:
                now = self._clock()
                soonest = min(due.values())
                if soonest > now:
                    await self._sleep((soonest - now).total_seconds())
                    continue
                for name, tick in sorted(due.items(), key=lambda item: item[1]):
                    if tick > now:
                        continue
                    entry = by_name[name]
                    # Skip ticks already past the next one (fell behind).
                    while (following := entry.next_tick(tick)) <= now:
                        tick = following
                    try:
                        await self.post_tick(entry, tick)
                    except OADAError as error:
                        logger.error(
                            "cron %s/%s: tick %s lost: %s", self.service, name, iso(tick), error
                        )
                    due[name] = entry.next_tick(tick)
        finally:
            self._state = CronState.STOPPED


#: The key of a service's :class:`CronTable` among its components.
CRON = "cron"


class CronTable:
    """A service's cron entries: the component that posts their ticks while it runs."""

    def __init__(self, entries: list[CronEntry] | None = None) -> None:
        self.entries: list[CronEntry] = list(entries or [])

    def copy(self) -> CronTable:
        return CronTable(self.entries)

    async def run(self, service: Service, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        await run_cron(service, task_status=task_status)


def _table(service: Service, *, create: bool = False) -> CronTable | None:
    table = service.component(CRON)
    if table is None and create:
        table = CronTable()
        service.add_component(CRON, table)
    if table is not None and not isinstance(table, CronTable):
        raise TypeError(f"expected the service's {CRON!r} component to be a CronTable")
    return table


def add_entry(
    service: Service,
    name: str,
    schedule: str,
    *,
    type: str | None = None,
    config: Mapping[str, Any] | BaseModel | None = None,
    timezone: str = "UTC",
    overlap: bool = False,
    version: int | None = None,
    options: JobOptions | Mapping[str, Any] | None = None,
    group: str | None = None,
    unique_key: str | None = None,
    tries: int | None = None,
    priority: int | None = None,
    timeout: float | timedelta | None = None,
    expires: float | timedelta | None = None,
) -> CronEntry:
    """Register a periodic job on *service* (what ``service.cron(...)`` does).

    *timezone* is the IANA zone the schedule is read in. *overlap* lets a
    tick post while the previous tick's job has not finished (by default it
    is skipped, and the skip recorded). *version* marks the entry: replicas
    running an older version stop posting its ticks once a newer one posted.
    *options* and the keywords after it are the ticks' job options
    (``group``, ``uniqueKey``, ``tries``, ``priority``, ``timeout`` in
    seconds); *expires* (seconds after its tick) sets each job's ``expiresAt``.
    """
    if service.state is not ServiceState.CREATED:
        raise RuntimeError("add cron entries before the service starts")
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"expected the job config as an object, got {config.__class__.__name__}")
    chosen = _tick_options(
        options, group=group, unique_key=unique_key, tries=tries, priority=priority, timeout=timeout
    )
    if not isinstance(overlap, bool):
        raise TypeError(f"expected overlap as True or False, got {overlap!r}")
    entry = CronEntry(
        name,
        schedule,
        type if type is not None else name,
        dict(config or {}),
        timezone=timezone,
        options=chosen,
        expires=expires.total_seconds() if isinstance(expires, timedelta) else expires,
        overlap=overlap,
        version=version,
    )
    table = _table(service, create=True)
    assert table is not None
    if any(existing.name == entry.name for existing in table.entries):
        raise ValueError(f"a cron entry named {name!r} already exists")
    table.entries.append(entry)
    return entry


def _tick_options(
    options: JobOptions | Mapping[str, Any] | None,
    *,
    group: str | None,
    unique_key: str | None,
    tries: int | None,
    priority: int | None,
    timeout: float | timedelta | None,
) -> dict[str, Any]:
    """The ticks' job options (camelCase JSON): *options*, then each keyword given."""
    chosen: dict[str, Any] = (
        options.to_json() if isinstance(options, JobOptions) else dict(options or {})
    )
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    for option, value in (
        ("group", group),
        ("uniqueKey", unique_key),
        ("tries", tries),
        ("priority", priority),
        ("timeout", timeout),
    ):
        if value is not None:
            chosen[option] = value
    return chosen


def entries_of(service: Service) -> list[CronEntry]:
    """The cron entries registered on *service*."""
    table = _table(service)
    return list(table.entries) if table is not None else []


def entry_named(service: Service, name: str) -> CronEntry:
    """The cron entry *name* of *service*, or :class:`LookupError` naming the known ones."""
    entries = entries_of(service)
    for entry in entries:
        if entry.name == name:
            return entry
    if not entries:
        raise LookupError(
            f"service {service.name} has no cron entries (add them with service.cron)"
        )
    names = [entry.name for entry in entries]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LookupError(
        f"service {service.name} has no cron entry {name!r}; its entries: {', '.join(names)}{hint}"
    )


async def read_state(oada: OADAClient, service: str) -> dict[str, Any]:
    """The cron state of *service* by entry name (``{}`` before the first tick).

    Each entry may have ``last``/``job`` (the latest tick posted) and
    ``manual: {last, job}`` (the latest run by hand).
    """
    try:
        data = (await oada.get(f"{service_root(service)}/cron")).data
    except NotFound:
        return {}
    if not isinstance(data, Mapping):
        return {}
    return {key: value for key, value in data.items() if not key.startswith("_")}


async def _post_with_fixed_key(
    oada: OADAClient,
    service: str,
    entry: CronEntry,
    *,
    layout: LayoutName,
    key: str,
    extra: JsonObject,
    options: JsonObject | None = None,
) -> str:
    """Post *entry*'s job under *key*, once more if that fails: the key is
    fixed, so a second try can never make a second job."""

    def failed(error: BaseException, delay: float) -> None:
        logger.warning(
            "cron %s/%s: posting %s failed (%s); trying once more", service, entry.name, key, error
        )

    return await retry(
        lambda: post_job(
            oada,
            service,
            entry.type,
            entry.config,
            layout=layout,
            key=key,
            extra=extra,
            options=options,
        ),
        retryable=lambda error: isinstance(error, OADAError),
        delay=lambda error, retry: 0.0,
        retries=1,
        on_retry=failed,
    )


#: The ``status`` of the first update of a job posted by :func:`post_now`.
MANUAL_STATUS = "manual"


async def post_now(
    oada: OADAClient,
    service: str,
    entry: CronEntry,
    *,
    layout: LayoutName = "classic",
    by: str = "by hand",
    clock: Clock = utc_now,
) -> str:
    """Post *entry*'s job now, outside its schedule, and return its id.

    The job is an ordinary job of the entry's type and config, linked into
    the pending list like a tick's job. Instead of a tick it carries
    ``cron: {"entry": <name>, "manual": true, "requested": <time>}`` and a
    first update ``{"status": "manual", "meta": "<entry> run now <by>, not by a tick"}``,
    so ``oada-jobs jobs show`` tells the two apart. Its key comes from
    :func:`manual_job_key`: it never replaces a tick's job, and the cron state
    the ticks use is only added to (``<entry>.manual: {last, job}``), never
    marked with a tick, so the next scheduled tick still posts.

    >>> job_id = await post_now(oada, "cleaner", entry, by="by oada-jobs cron run")  # doctest: +SKIP
    """
    now = utc(clock())
    key = manual_job_key(service, entry.name)
    update_key, update = new_update(
        MANUAL_STATUS, f"cron entry {entry.name} run now {by}, not by a tick", at=now
    )
    extra = {
        "cron": {"entry": entry.name, "manual": True, "requested": iso(now)},
        "updates": {update_key: update},
    }
    job_id = await _post_with_fixed_key(
        oada, service, entry, layout=layout, key=key, extra=extra, options=entry.job_options(now)
    )
    try:
        # A merge of a key the ticks do not read: a tick racing with this
        # write gets a 412 at worst, reads again and posts as usual.
        await oada.put(
            f"{service_root(service)}/cron",
            {entry.name: {"manual": {"last": iso(now), "job": job_id}}},
            tree=_state_tree(layout),
        )
    except OADAError as error:
        # The job is posted and runs either way; only `oada-jobs cron list` misses it.
        logger.warning(
            "cron %s/%s: could not record the run by hand: %s", service, entry.name, error
        )
    return job_id


async def run_cron(
    service: Service,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = anyio.sleep,
    task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run *service*'s cron entries with its client until the returned scope is cancelled.

    ``scope = await task_group.start(run_cron, service)`` returns once the
    cron state exists; a service without entries gets a scope at once and
    nothing runs.
    """
    with anyio.CancelScope() as scope:
        entries = entries_of(service)
        if not entries:
            task_status.started(scope)
            return
        scheduler = CronScheduler(
            service.oada,
            service.name,
            entries,
            layout=service.config.layout,
            clock=clock,
            sleep=sleep,
        )

        async def started(*, task_status: TaskStatus[None]) -> None:
            await scheduler.run(task_status=task_status)

        async with anyio.create_task_group() as group:
            await group.start(started)
            task_status.started(scope)


Service.provide("cron", add_entry)
