"""One pending job as the scheduler sees it: :class:`Entry` and its states.

Owns :class:`Entry`, :class:`EntryState`, :class:`Entries` (a list's
entries by job id and by key), the :data:`URGENT` priority, the
anyio clock time of a wall-clock moment (:func:`clock_at`) and
:class:`Signal`, the event the scheduler's books fire on a change. Plain data
shared by :class:`~oada_jobs.scheduler.Scheduler` and the books it keeps
(groups, timers, bodies, run order, settling); must not import any of them,
nor the queue, the runner or the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import anyio

from .job import Job, utc_now
from .outcome import JobOutcome

__all__ = ["URGENT", "Entries", "Entry", "EntryState", "Signal", "clock_at"]

#: Priority of jobs that only need to be filed (bad, finished, cancelled,
#: refused): they go before all others, since they take no time.
URGENT = math.inf


class Signal:
    """An event made on demand: :attr:`event` is what to wait on, :meth:`fire`
    sets it. A change nobody waits for (most of them) costs no event."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    @property
    def event(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


class EntryState(Enum):
    """Where a job stands in the scheduler."""

    #: Being read (or waiting to be read) by the queue.
    READING = "reading"
    #: Read, waiting for the jobs queued before it to be read.
    SETTLING = "settling"
    #: Waiting on a timer (``notBefore``/``runAt``, or a lease held elsewhere);
    #: the job is read again when it fires.
    WAITING = "waiting"
    #: May run once a slot is free (and its group lets it).
    READY = "ready"
    #: Handed to a runner here.
    RUNNING = "running"
    #: Merged into the job holding its unique key; filed when that one ends.
    PARKED = "parked"
    #: In another replica's share: not read here (or read as context only).
    ELSEWHERE = "elsewhere"
    #: Read, with a group or unique key: waiting for the jobs queued before
    #: it in other replicas' shares to be read here.
    CATCHING_UP = "catching-up"
    #: Held back by its type (paused, at its concurrency or rate limit);
    #: ready again when the dispatcher's gate lets the type go.
    HELD = "held"


@dataclass(eq=False, slots=True)
class Entry:
    """One job of the pending list as the scheduler sees it."""

    #: Its key in the pending list.
    key: str
    #: The job resource id.
    job_id: str
    #: Queue order: the order the queue first saw the job.
    seq: int
    state: EntryState = EntryState.READING
    #: The job as read, while kept in memory (``None``: read it again before running).
    job: Job[Any] | None = None
    #: Why the job cannot run (a bad job, a missing resource): it is only filed.
    problem: BaseException | None = None
    priority: float = 0
    #: The job's group and how many of that group may run at once.
    group: str | None = None
    group_limit: int = 1
    #: ``(type, uniqueKey)`` while this job holds (or wants) a unique key.
    unique: tuple[str, str] | None = None
    #: Set when refused: the job holding its unique key.
    duplicate_of: str | None = None
    #: Jobs merged into this one (filed with its outcome), and the one this is merged into.
    merged: list[Entry] = field(default_factory=list)
    parked_on: Entry | None = None
    #: For a merged job whose holder finished: the holder and its outcome.
    merged_into: tuple[str, JobOutcome] | None = None
    #: anyio clock time its timer fires (while ``WAITING``).
    wake_at: float | None = None
    #: anyio clock time it expires while ``READY`` behind its group (read again then).
    expires_at: float | None = None
    #: Whether the queue has read it at least once.
    settled_once: bool = False
    #: Reads of it that failed while others came back (see :class:`~oada_jobs.settling.FirstReads`).
    failed_reads: int = 0
    #: The scheduler's count of reads that came back, at its last failed read.
    reads_back_at_failure: int = -1
    #: Its link left the list while it ran: forget it when the run ends.
    gone: bool = False
    #: Counted among its group's running jobs (it was started by :meth:`Scheduler.pop`;
    #: jobs only filed never are). Exactly these are uncounted when they stop.
    counted: bool = False
    #: anyio clock time the queue first saw it (how long it waited, for stealing).
    seen_at: float = 0.0
    #: Taken from another replica's share, which left it waiting too long.
    stolen: bool = False
    #: The earlier jobs it waits for (while ``CATCHING_UP``), by job id.
    missing: set[str] = field(default_factory=set)
    #: Whether the jobs queued before it were all read (done once).
    caught_up: bool = False
    #: The job's type, once read (kept when its body is dropped).
    job_type: str | None = None

    @property
    def urgent(self) -> bool:
        """Only needs filing (no work function runs)."""
        return self.priority == URGENT


def clock_at(moment: datetime) -> float:
    """The anyio clock time of a wall-clock *moment*."""
    return anyio.current_time() + (moment - utc_now()).total_seconds()


class Entries:
    """The entries of one pending list, by job id and by list key, numbered
    in the order they were first seen (their queue order)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Entry] = {}
        self._by_key: dict[str, Entry] = {}
        #: How many jobs have been seen so far.
        self.seq = 0

    def new(self, key: str, job_id: str) -> Entry | None:
        """A new entry for a job seen for the first time; ``None`` if already known."""
        if job_id in self._by_id:
            return None
        self.seq += 1
        entry = Entry(key, job_id, self.seq, seen_at=anyio.current_time())
        self._by_id[job_id] = entry
        self._by_key[key] = entry
        return entry

    def forget(self, entry: Entry) -> bool:
        """Drop *entry*, which left the list; whether it was known."""
        if not self.known(entry):
            return False
        del self._by_id[entry.job_id]
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        return True

    def known(self, entry: Entry) -> bool:
        """Whether *entry* is (still) the list's entry for its job."""
        return self._by_id.get(entry.job_id) is entry

    def get(self, job_id: str) -> Entry | None:
        return self._by_id.get(job_id)

    def by_key(self, key: str) -> Entry | None:
        return self._by_key.get(key)

    def all(self) -> list[Entry]:
        """The known entries, in the order first seen (a copy)."""
        return list(self._by_id.values())

    def counts(self) -> dict[str, int]:
        """How many entries are in each state."""
        totals = {state.value: 0 for state in EntryState}
        for entry in self._by_id.values():
            totals[entry.state.value] += 1
        return totals

    def check(self) -> None:
        """Raise :class:`AssertionError` unless the key and id maps agree."""
        assert all(self.known(entry) for entry in self._by_key.values())
