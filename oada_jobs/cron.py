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

A tick is posted at most once: ticks missed while no replica ran are not
caught up, and a replica that dies between recording a tick and posting its
job loses that tick.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from croniter import CroniterBadCronError, croniter
from pydantic import BaseModel

from .exceptions import NotFound, OADAError, PreconditionFailed
from .job import iso, utc_now
from .requester import post_job
from .tree import JOBS_TYPE, LayoutName, get_layout, service_root
from .types import JsonObject, Tree

if TYPE_CHECKING:
    from .client import OADAClient
    from .service import Service

__all__ = ["CronEntry", "CronScheduler", "add_entry", "cron_job_key", "run_cron"]

logger = logging.getLogger("oada_jobs.cron")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")

#: Clock: the current time, timezone-aware UTC.
Clock = Callable[[], datetime]
#: Sleep for that many seconds (``anyio.sleep`` unless a test injects one).
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CronEntry:
    """One periodic job: post a *type* job with *config* on *schedule* (UTC)."""

    #: Name of the entry; part of each tick's job key and of the cron state.
    name: str
    #: A five-field cron expression (minute resolution), e.g. ``"*/5 * * * *"``.
    schedule: str
    #: Job type to post.
    type: str
    #: Job config, a JSON object.
    config: JsonObject = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                "expected a cron entry name of letters, digits and '.', '_', '~', '-' "
                f"(starting with a letter or digit, at most 64), got {self.name!r}"
            )
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"expected the job type as a non-empty string, got {self.type!r}")
        if not isinstance(self.schedule, str) or len(self.schedule.split()) != 5:
            raise ValueError(
                "expected a cron schedule of five fields (minute hour day month weekday), "
                f"got {self.schedule!r}"
            )
        try:
            croniter(self.schedule, datetime(2000, 1, 1, tzinfo=UTC))
        except (CroniterBadCronError, ValueError, KeyError) as error:
            raise ValueError(f"invalid cron schedule {self.schedule!r}: {error}") from None

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after *after* (UTC)."""
        return _utc(croniter(self.schedule, _utc(after)).get_next(datetime))

    def is_tick(self, at: datetime) -> bool:
        """Whether *at* (to the minute) is a tick of this schedule."""
        at = _minute(at)
        return self.next_tick(at - timedelta(minutes=1)) == at


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"expected a timezone-aware time, got {moment!r}")
    return moment.astimezone(UTC)


def _minute(moment: datetime) -> datetime:
    return _utc(moment).replace(second=0, microsecond=0)


def cron_job_key(service: str, entry: str, tick: datetime) -> str:
    """The fixed job key of one tick: ``cron-<service>-<entry>-<YYYYMMDDTHHMM>Z``."""
    return f"cron-{service}-{entry}-{_minute(tick):%Y%m%dT%H%M}Z"


def _state_tree(layout: LayoutName) -> Tree:
    tree: dict[str, Any] = {**get_layout(layout).tree}
    bookmarks = {**tree["bookmarks"]}
    services = {**bookmarks["services"]}
    node = {**services["*"], "cron": {"_type": JOBS_TYPE}}
    services["*"] = node
    bookmarks["services"] = services
    tree["bookmarks"] = bookmarks
    return tree


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
        was already taken.
        """
        tick = _minute(tick)
        stamp = iso(tick)
        key = cron_job_key(self.service, entry.name, tick)
        for _attempt in range(10):
            try:
                response = await self.oada.get(self.state_path)
            except NotFound:
                # Someone removed the state: make it again and look once more.
                await self.ensure_state()
                continue
            data = response.data if isinstance(response.data, Mapping) else {}
            seen = data.get(entry.name)
            last = seen.get("last") if isinstance(seen, Mapping) else None
            if isinstance(last, str) and last >= stamp:
                return None
            try:
                await self.oada.put(
                    self.state_path,
                    {entry.name: {"last": stamp, "job": f"resources/{key}"}},
                    content_type=JOBS_TYPE,
                    if_match=response.etag,
                )
            except PreconditionFailed:
                continue  # another replica (or entry) wrote first: look again
            break
        else:
            logger.warning(
                "cron %s/%s: state kept changing; skipping %s", self.service, entry.name, stamp
            )
            return None
        extra = {"cron": {"entry": entry.name, "tick": stamp}}
        try:
            return await post_job(
                self.oada,
                self.service,
                entry.type,
                entry.config,
                layout=self.layout,
                key=key,
                extra=extra,
            )
        except OADAError as error:
            # The key is fixed, so one more try cannot make a second job.
            logger.warning(
                "cron %s/%s: posting %s failed (%s); trying once more",
                self.service,
                entry.name,
                key,
                error,
            )
            return await post_job(
                self.oada,
                self.service,
                entry.type,
                entry.config,
                layout=self.layout,
                key=key,
                extra=extra,
            )

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


# Entries registered with service.cron(), kept here so Service needs no new state.
_ENTRIES: weakref.WeakKeyDictionary[Service, list[CronEntry]] = weakref.WeakKeyDictionary()


def add_entry(
    service: Service,
    name: str,
    schedule: str,
    *,
    type: str | None = None,
    config: Mapping[str, Any] | BaseModel | None = None,
) -> CronEntry:
    """Register a periodic job on *service* (what ``service.cron(...)`` does)."""
    from .service import ServiceState

    if service.state is not ServiceState.CREATED:
        raise RuntimeError("add cron entries before the service starts")
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"expected the job config as an object, got {config.__class__.__name__}")
    entry = CronEntry(name, schedule, type if type is not None else name, dict(config or {}))
    entries = _ENTRIES.setdefault(service, [])
    if any(existing.name == entry.name for existing in entries):
        raise ValueError(f"a cron entry named {name!r} already exists")
    entries.append(entry)
    return entry


def entries_of(service: Service) -> list[CronEntry]:
    """The cron entries registered on *service*."""
    return list(_ENTRIES.get(service, []))


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
