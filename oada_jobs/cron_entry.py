"""One periodic job: its cron schedule, its ticks and the keys of their jobs.

A schedule has five fields or six (seconds first) and is read in an IANA
time zone, daylight saving time included. Each tick's job has a key fixed
by (service, entry, tick) (:func:`cron_job_key`); a run by hand gets a key
of its own (:func:`manual_job_key`).

Owns :class:`CronEntry` (validated when made) and the job keys; pure, no
I/O. Must not touch the cron state, the client or the service
(:mod:`oada_jobs.cron` posts the ticks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter

from ._ksuid import ksuid
from .job import JobOptions, iso
from .types import JsonObject

__all__ = ["CronEntry", "cron_job_key", "manual_job_key", "utc"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,63}")


@dataclass(frozen=True, slots=True)
class CronEntry:
    """One periodic job: post a *type* job with *config* on *schedule*.

    The schedule is read in *timezone* (an IANA name such as
    ``"Europe/Berlin"``; UTC by default), daylight saving time included.
    """

    #: Name of the entry; part of each tick's job key and of the cron state.
    name: str
    #: A cron expression: five fields (minute hour day month weekday), or six
    #: with seconds first (second minute hour day month weekday).
    schedule: str
    #: Job type to post.
    type: str
    #: Job config, a JSON object.
    config: JsonObject = field(default_factory=dict)
    #: The IANA time zone the schedule is read in.
    timezone: str = "UTC"
    #: Job ``options`` (camelCase JSON, see :class:`~oada_jobs.JobOptions`) of each tick's job.
    options: JsonObject = field(default_factory=dict)
    #: Seconds after its tick a tick's job expires (``expiresAt``), if it has not started.
    expires: float | None = None
    #: Whether a tick may post while the previous tick's job has not finished.
    overlap: bool = False
    #: The entry's version: a newer one takes over the schedule from older replicas.
    version: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                "expected a cron entry name of letters, digits and '.', '_', '~', '-' "
                f"(starting with a letter or digit, at most 64), got {self.name!r}"
            )
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"expected the job type as a non-empty string, got {self.type!r}")
        if not isinstance(self.schedule, str) or len(self.schedule.split()) not in (5, 6):
            raise ValueError(
                "expected a cron schedule of five fields (minute hour day month weekday) "
                f"or six (second first), got {self.schedule!r}"
            )
        _zone(self.timezone)
        try:
            croniter(
                self.schedule, datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=self.seconds
            )
        except (CroniterBadCronError, ValueError, KeyError) as error:
            raise ValueError(f"invalid cron schedule {self.schedule!r}: {error}") from None
        _, problems = JobOptions.parse(self.options)
        if problems:
            raise ValueError(f"bad job options for cron entry {self.name!r}: {'; '.join(problems)}")
        if self.expires is not None and (
            isinstance(self.expires, bool)
            or not isinstance(self.expires, int | float)
            or not self.expires > 0
        ):
            raise ValueError(f"expected expires as seconds > 0, got {self.expires!r}")
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0
        ):
            raise ValueError(f"expected the version as an integer >= 0, got {self.version!r}")

    @property
    def seconds(self) -> bool:
        """Whether the schedule has a seconds field (six fields)."""
        return len(self.schedule.split()) == 6

    @property
    def resolution(self) -> timedelta:
        """A second for a six-field schedule, else a minute."""
        return timedelta(seconds=1) if self.seconds else timedelta(minutes=1)

    def truncate(self, moment: datetime) -> datetime:
        """*moment* in UTC, cut to the schedule's resolution."""
        moment = utc(moment).replace(microsecond=0)
        return moment if self.seconds else moment.replace(second=0)

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after *after* (returned in UTC).

        On the day clocks go back, a wall time that happens twice is a tick
        once, unless the hour field is a wildcard (``*``, ``*/2``): then
        each real hour has its ticks. On the day clocks go forward, a tick in
        the skipped hour comes at the first minute after it.
        """
        zone = _zone(self.timezone)
        ticks = croniter(
            self.schedule, utc(after).astimezone(zone), second_at_beginning=self.seconds
        )
        while True:
            tick: datetime = ticks.get_next(datetime)
            if not self._second_of_twice(tick, zone):
                return utc(tick)

    def _second_of_twice(self, tick: datetime, zone: ZoneInfo) -> bool:
        """Whether *tick* is the second pass of a repeated wall time, for a fixed hour."""
        hour = self.schedule.split()[2 if self.seconds else 1]
        if hour.startswith("*"):
            return False
        wall = tick.replace(tzinfo=None)
        first = wall.replace(tzinfo=zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=zone, fold=1).utcoffset()
        return first != second and tick.utcoffset() == second

    def next_ticks(self, after: datetime, count: int) -> list[datetime]:
        """The first *count* ticks strictly after *after* (UTC)."""
        ticks: list[datetime] = []
        for _ in range(count):
            after = self.next_tick(after)
            ticks.append(after)
        return ticks

    def is_tick(self, at: datetime) -> bool:
        """Whether *at* (to the schedule's resolution) is a tick of this schedule."""
        at = self.truncate(at)
        return self.next_tick(at - self.resolution) == at

    def outdated_by(self, stored: object) -> bool:
        """Whether the *stored* version of this entry (hostile: from the cron
        state) is newer than this one's."""
        mine = self.version
        if mine is None or isinstance(stored, bool) or not isinstance(stored, int):
            return False
        return stored > mine

    def job_options(self, tick: datetime) -> JsonObject | None:
        """The ``options`` of *tick*'s job: the entry's, its version and expiry."""
        options = dict(self.options)
        if self.version is not None:
            options.setdefault("version", self.version)
        if self.expires is not None:
            options["expiresAt"] = iso(tick + timedelta(seconds=self.expires))
        return options or None


def _zone(name: object) -> ZoneInfo:
    """The IANA time zone *name*, or :class:`ValueError`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected an IANA time zone name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"expected an IANA time zone name such as 'Europe/Berlin', got {name!r}"
        ) from None


def utc(moment: datetime) -> datetime:
    """*moment* in UTC; :class:`ValueError` if it has no time zone."""
    if moment.tzinfo is None:
        raise ValueError(f"expected a timezone-aware time, got {moment!r}")
    return moment.astimezone(UTC)


def cron_job_key(service: str, entry: str, tick: datetime, *, seconds: bool = False) -> str:
    """The fixed job key of one tick: ``cron-<service>-<entry>-<YYYYMMDDTHHMM>Z``.

    With *seconds* (a six-field schedule) a tick within a minute has its
    seconds too (``...THHMMSSZ``); one on the minute keeps the short key.
    """
    tick = utc(tick).replace(microsecond=0)
    within = f"{tick:%S}" if seconds and tick.second else ""
    return f"cron-{service}-{entry}-{tick:%Y%m%dT%H%M}{within}Z"


def manual_job_key(service: str, entry: str) -> str:
    """A new key for a run by hand: ``cron-<service>-<entry>-manual-<ksuid>``.

    A KSUID (27 characters) never looks like a tick's ``YYYYMMDDTHHMMZ``, so a
    run by hand cannot take a tick's key, and each run by hand is a job of its own.
    """
    return f"cron-{service}-{entry}-manual-{ksuid()}"
