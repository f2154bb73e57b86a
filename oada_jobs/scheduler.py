"""Which pending job of a queue runs next: the in-memory side of scheduling.

A :class:`~oada_jobs.queue.Queue` reads every job linked into its pending
list once and hands it here. The scheduler keeps a small :class:`Entry` per
job and decides:

- **when** it may start: a job whose ``options.notBefore`` or ``runAt`` lies
  ahead waits on a timer, holding no concurrency slot; so does a job running
  on another worker (until its lease would expire). When a timer fires, the
  queue reads the job again (it may have changed meanwhile) and hands it back;
- **in what order**: among ready jobs, higher ``priority`` first, then the
  order the jobs were queued;
- **unique keys**: of jobs with the same type and ``uniqueKey``, the first
  one queued holds the key until it leaves the list; later ones are refused or
  merged into it (the type's ``unique`` policy);
- **groups**: of jobs naming the same ``group``, only the first
  ``group_limit`` (by queue order) may run; the next one moves up when one
  leaves the list.

Across replicas of a service (see :mod:`oada_jobs.replicas`), each job of
the list has an entry here, but only the jobs this replica *owns* (its share,
or jobs it stole) are read and run. The others are :attr:`EntryState.ELSEWHERE`
and unread, except when a job of this replica's share has a group or a
unique key: its place depends on the jobs queued before it, so those are
read first (once each) and kept as context, never run here.

Everything here is synchronous and holds no I/O; what the jobs say lives in
OADA, so a restarted service rebuilds the same state by reading its list.

Owns :class:`Scheduler` and :class:`Entry`. Sees a job type's defaults only
through :class:`Policy` and an outcome only as data; must not touch the
client, the queue, the runner or the service.

:class:`Scheduler` (and so this file) is longer than the ~300 lines a class
here keeps to: it is one state machine whose books (ready heap, timers,
unique-key holders, group counts, room for reads) must change together on
every transition.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

import anyio

from .job import Job, JobStatus, utc_now
from .outcome import JobOutcome
from .types import UniquePolicy

__all__ = ["Entry", "EntryState", "Policy", "Scheduler", "UniquePolicy"]


class Policy(Protocol):
    """A job type's scheduling defaults (a registered ``Worker`` is one)."""

    @property
    def priority(self) -> int: ...
    @property
    def group_limit(self) -> int: ...
    @property
    def unique(self) -> UniquePolicy: ...
    @property
    def min_version(self) -> int | None: ...


#: Priority of jobs that only need to be filed (bad, finished, cancelled,
#: refused): they go before all others, since they take no time.
URGENT = math.inf
#: Failed first reads of a job that the jobs queued after it wait through.
HELD_FAILED_READS = 3


class _Signal:
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
    #: Reads of it that failed while others came back (see Scheduler.read_failed).
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


def _everything(key: str) -> bool:
    return True


def _nowhere(entry: Entry) -> None:
    pass


class Scheduler:
    """The pending jobs of one queue and the order they run in.

    *policy_for* gives the scheduling :class:`Policy` (the registered worker) of a
    job type (its defaults: priority, group limit, unique policy), or
    ``None``. *keep_bodies* bounds how many read jobs are held in memory: the
    queue reads new jobs only while fewer are held.
    """

    def __init__(
        self,
        policy_for: Callable[[str], Policy | None],
        *,
        worker_id: str,
        keep_bodies: int = 1000,
        owns: Callable[[str], bool] | None = None,
        want_read: Callable[[Entry], None] | None = None,
    ) -> None:
        self._policy_for = policy_for
        # Whether a list key is this replica's share; everything, by default.
        self._owns = owns if owns is not None else _everything
        # Hands an entry to the queue's readers (context reads of other shares).
        self._want_read = want_read if want_read is not None else _nowhere
        # Jobs of this share waiting for the jobs queued before them to be read.
        self._catching_up: list[Entry] = []
        # Jobs of other shares never read here, in queue order (settled or
        # removed ones are dropped lazily): what a grouped job may wait for.
        self._unread_elsewhere: deque[Entry] = deque()
        self._worker_id = worker_id
        self._keep_bodies = keep_bodies
        self._seq = 0
        self._by_id: dict[str, Entry] = {}
        self._by_key: dict[str, Entry] = {}
        # First reads, settled strictly in queue order (a group's or unique
        # key's order must not depend on which read came back first).
        self._unsettled: list[tuple[int, int, Entry]] = []
        # Reads that came back (a job or a problem), to tell one job that
        # cannot be read from a server that is away.
        self._reads_back = 0
        # Heaps; an entry may be pushed again, so stale copies are skipped
        # on pop and a push counter breaks ties.
        self._ready: list[tuple[float, int, int, Entry]] = []
        self._timers: list[tuple[float, int, Entry]] = []
        self._pushes = itertools.count()
        self._groups: dict[str, list[Entry]] = {}
        # Members of each group running now (here): a late joiner queued
        # before them must not push the group past its limit.
        self._group_running: dict[str, int] = {}
        # Jobs that only need filing: they skip the queue and the slots.
        self._urgent: deque[Entry] = deque()
        self._holders: dict[tuple[str, str], Entry] = {}
        # Jobs held back by their type, by type (see hold()).
        self._held: dict[str, list[Entry]] = {}
        self._bodies = 0
        self._reserved = 0
        # Jobs read but waiting for an earlier one's first read to settle.
        self._settling = 0
        self._changed = _Signal()
        # Room for first reads freed (or a settling order that lets the
        # first unsettled read through): only readers waiting for room
        # wait on it, so they are not woken by every other change.
        self._room = _Signal()
        self._timer_added = _Signal()
        self._urgent_added = _Signal()

    # ------------------------------------------------------------ signals

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change (a job became ready, a timer was added, room freed)."""
        return self._changed.event

    @property
    def timer_added(self) -> anyio.Event:
        """Set when a timer is next added; the queue's timer task waits on this
        alone (waking it for every change cost more than the timers)."""
        return self._timer_added.event

    @property
    def urgent_added(self) -> anyio.Event:
        """Set when a job that only needs filing is next queued."""
        return self._urgent_added.event

    # ------------------------------------------------------------ reading

    @property
    def last_seq(self) -> int:
        """How many jobs the scheduler has been handed so far."""
        return self._seq

    @property
    def held_jobs(self) -> int:
        """How many read jobs are kept in memory."""
        return self._bodies

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._by_id.values()))

    def get(self, job_id: str) -> Entry | None:
        return self._by_id.get(job_id)

    def by_key(self, key: str) -> Entry | None:
        return self._by_key.get(key)

    def mine(self, entry: Entry) -> bool:
        """Whether *entry* is this replica's to read and run (its share, or stolen)."""
        return entry.stolen or self._owns(entry.key)

    def add(self, key: str, job_id: str) -> Entry | None:
        """A job seen in the list for the first time; ``None`` if already known.

        It is ``READING`` if it is this replica's to read, else ``ELSEWHERE``.
        """
        if job_id in self._by_id:
            return None
        self._seq += 1
        entry = Entry(key, job_id, self._seq, seen_at=anyio.current_time())
        self._by_id[job_id] = entry
        self._by_key[key] = entry
        if self.mine(entry):
            heapq.heappush(self._unsettled, (entry.seq, next(self._pushes), entry))
        else:
            entry.state = EntryState.ELSEWHERE
            self._unread_elsewhere.append(entry)
        return entry

    def reread(self, entry: Entry) -> None:
        """The queue is reading *entry* again (its timer fired, or its link was touched)."""
        self._drop_body(entry)
        if entry.parked_on is not None:
            if entry in entry.parked_on.merged:
                entry.parked_on.merged.remove(entry)
            entry.parked_on = None
        entry.state = EntryState.READING
        entry.wake_at = None
        entry.expires_at = None

    def read(self, entry: Entry, job: Job[Any] | None, problem: BaseException | None) -> None:
        """The queue read *entry*: its job, or the *problem* that makes it unrunnable."""
        if self._by_id.get(entry.job_id) is not entry:
            return  # left the list while being read
        entry.problem = problem
        entry.failed_reads = 0
        self._reads_back += 1
        self._set_body(entry, job)
        if entry.settled_once or not self.mine(entry):
            # Another share's job, read as context: only its place matters.
            entry.settled_once = True
            self._settle(entry)
            self._known(entry)
            return
        entry.state = EntryState.SETTLING
        self._settling += 1
        # Again, if it came from another share (heap copies of a settled one are skipped).
        heapq.heappush(self._unsettled, (entry.seq, next(self._pushes), entry))
        self._drain_unsettled()
        self._known(entry)
        if self._settling:
            # Reads wait for an earlier one: that one may go past a full scheduler.
            self._room.fire()

    def _drain_unsettled(self) -> None:
        """Settle first reads in queue order, as far as they have come back."""
        while self._unsettled:
            *_, first = self._unsettled[0]
            if (
                self._by_id.get(first.job_id) is not first
                or first.settled_once
                or first.state is EntryState.ELSEWHERE
            ):
                heapq.heappop(self._unsettled)
                continue
            if first.state is not EntryState.SETTLING:
                break  # not read yet (or its read failed and is retried)
            heapq.heappop(self._unsettled)
            first.settled_once = True
            self._settling -= 1
            self._settle(first)

    def _head_unsettled(self) -> Entry | None:
        """The first job of this share whose first read has not settled, if any
        (dropping from the heap jobs that left, settled or moved to another share)."""
        while self._unsettled:
            *_, first = self._unsettled[0]
            if (
                self._by_id.get(first.job_id) is first
                and not first.settled_once
                and first.state is not EntryState.ELSEWHERE
            ):
                return first
            heapq.heappop(self._unsettled)
        return None

    def reading_first(self) -> bool:
        """Whether a job of this share seen in the list still waits for its first
        read to settle, or for the jobs queued before it to be read as context."""
        return self._head_unsettled() is not None or any(
            waiter.state is EntryState.CATCHING_UP for waiter in self._catching_up
        )

    def first_unsettled(self, entry: Entry) -> bool:
        """Whether *entry* is the job whose first read the others wait for."""
        return self._head_unsettled() is entry

    # ------------------------------------------------------------ deciding

    def _settle(self, entry: Entry) -> None:
        job = entry.job
        # A problem (it is only filed), or not read: its runner reads it.
        if entry.problem is not None or job is None:
            self._make_ready(entry, URGENT)
            return
        policy = self._policy_for(job.type)
        if job.finished or job.status == JobStatus.CANCEL_REQUESTED.value:
            self._make_ready(entry, URGENT)
            return
        minimum = policy.min_version if policy is not None else None
        if minimum is not None and job.options.effective_version < minimum:
            self._make_ready(entry, URGENT)
            return
        options = job.options
        ordered = options.group is not None or options.unique_key is not None
        if not self.mine(entry) and not ordered:
            # Another share's job that no group or unique key ties to ours.
            self._drop_body(entry)
            entry.state = EntryState.ELSEWHERE
            return
        if ordered and self.mine(entry) and not entry.caught_up and self._catch_up(entry):
            return
        self._place(entry, job, policy)

    # ------------------------------------------------------------ other shares

    def _catch_up(self, entry: Entry) -> bool:
        """Have the jobs queued before *entry* that were never read here read
        now; ``True`` if *entry* must wait for them (it is ``CATCHING_UP``)."""
        entry.caught_up = True
        unread = self._unread_elsewhere
        while unread and (
            unread[0].settled_once or self._by_id.get(unread[0].job_id) is not unread[0]
        ):
            unread.popleft()
        missing = set()
        for other in unread:
            if other.seq >= entry.seq:
                break  # in queue order: the rest came later
            if not other.settled_once and self._by_id.get(other.job_id) is other:
                missing.add(other.job_id)
        if not missing:
            return False
        entry.state = EntryState.CATCHING_UP
        entry.missing = missing
        self._catching_up.append(entry)
        for job_id in missing:
            other = self._by_id[job_id]
            if other.state is EntryState.ELSEWHERE:
                other.state = EntryState.READING
                self._want_read(other)
        return True

    def _known(self, entry: Entry) -> None:
        """*entry* was read (or left): jobs catching up on it may go on."""
        if not self._catching_up:
            return
        waiting, self._catching_up = self._catching_up, []
        for waiter in waiting:
            waiter.missing.discard(entry.job_id)
            if self._by_id.get(waiter.job_id) is not waiter:
                continue
            if waiter.missing or waiter.state is not EntryState.CATCHING_UP:
                self._catching_up.append(waiter)
                continue
            job = waiter.job
            if job is None:
                self.reread(waiter)
                self._want_read(waiter)
                continue
            self._place(waiter, job, self._policy_for(job.type))

    def reown(self) -> list[Entry]:
        """The replicas changed: jobs now in this share are to be read (returned),
        and read jobs now in it may run; jobs that left it are no longer started."""
        to_read = []
        for entry in list(self._by_id.values()):
            if not self.mine(entry):
                continue
            if entry.state is EntryState.ELSEWHERE:
                entry.state = EntryState.READING
                if not entry.settled_once:
                    heapq.heappush(self._unsettled, (entry.seq, next(self._pushes), entry))
                to_read.append(entry)
            elif entry.state is EntryState.READY:
                # Held while it was another share's: may start here now.
                self._make_ready(entry, entry.priority)
        self._notify()
        return to_read

    def steal(self, count: int, seen_before: float) -> list[Entry]:
        """Take up to *count* jobs of other shares first seen before *seen_before*
        (anyio clock) into this one, newest first (the least likely to be
        claimed by their owner already); returns them, to be read."""
        candidates = [
            entry
            for entry in self._by_id.values()
            if entry.state in (EntryState.ELSEWHERE, EntryState.READY)
            and entry.seen_at <= seen_before
            and not self.mine(entry)
        ]
        candidates.sort(key=lambda entry: entry.seq, reverse=True)
        taken = candidates[:count]
        for entry in taken:
            entry.stolen = True
            self.reread(entry)
            if not entry.settled_once:
                heapq.heappush(self._unsettled, (entry.seq, next(self._pushes), entry))
        return taken

    def keep_mine(self, merged: list[Entry]) -> list[Entry]:
        """Of jobs merged into one that left, those of this share; the others
        are their owners' to file (read here again only if their share moves here)."""
        mine = []
        for entry in merged:
            if self.mine(entry):
                mine.append(entry)
            elif self._by_id.get(entry.job_id) is entry:
                entry.state = EntryState.ELSEWHERE
        return mine

    def busy(self) -> bool:
        """Whether jobs of this replica's share wait to be read or to start."""
        if self.has_ready():
            return True
        return any(
            entry.state in (EntryState.READING, EntryState.SETTLING, EntryState.CATCHING_UP)
            and self.mine(entry)
            for entry in self._by_id.values()
        )

    def _place(self, entry: Entry, job: Job[Any], policy: Policy | None) -> None:
        options = job.options
        entry.job_type = job.type
        entry.duplicate_of = None
        entry.expires_at = None
        if job.expired_for(self._worker_id):
            # Never started: its runner files it as expired, holding no key or group place.
            self._make_ready(entry, URGENT)
            return
        # Unique key: the first job queued holds it while in the list.
        if entry.unique is None and options.unique_key is not None:
            mode = policy.unique if policy is not None else "refuse"
            if mode != "allow":
                wanted = (job.type, options.unique_key)
                holder = self._holders.get(wanted)
                if holder is None:
                    self._holders[wanted] = entry
                    entry.unique = wanted
                elif holder is not entry:
                    if mode == "merge":
                        self._drop_body(entry)
                        entry.state = EntryState.PARKED
                        entry.parked_on = holder
                        holder.merged.append(entry)
                        self._notify()
                    else:
                        entry.duplicate_of = holder.job_id
                        self._make_ready(entry, URGENT)
                    return
        # Group: joins once, keeping its place through retries and re-reads.
        if options.group is not None and entry.group is None:
            entry.group = options.group
            entry.group_limit = policy.group_limit if policy is not None else 1
            members = self._groups.setdefault(options.group, [])
            members.append(entry)
            members.sort(key=lambda member: member.seq)
        until = job.wait_until(self._worker_id)
        if until is not None:
            # Not due yet, or running elsewhere (until its lease would run out).
            self._wait(entry, clock_at(until))
            return
        priority = options.priority
        if priority is None:
            priority = policy.priority if policy is not None else 0
        self._make_ready(entry, priority)
        if (
            options.expires_at is not None
            and entry.state is EntryState.READY
            and not self._may_start(entry)
        ):
            # Ready but held behind its group: read again when it expires, to be filed.
            entry.expires_at = at = clock_at(options.expires_at)
            heapq.heappush(self._timers, (at, next(self._pushes), entry))
            self._timer_added.fire()

    def _make_ready(self, entry: Entry, priority: float) -> None:
        entry.state = EntryState.READY
        entry.priority = priority
        if not self.mine(entry):
            # Another share's: kept for its place in a group or unique key only.
            self._drop_body(entry)
        elif entry.urgent:
            self._urgent.append(entry)
            self._notify()
            self._urgent_added.fire()
        elif self._may_start(entry):
            self._push_ready(entry)
        else:
            # Blocked behind its group: holds no room; read again when it runs.
            self._drop_body(entry)

    def _push_ready(self, entry: Entry) -> None:
        heapq.heappush(self._ready, (-entry.priority, entry.seq, next(self._pushes), entry))
        self._notify()

    def _may_start(self, entry: Entry) -> bool:
        if entry.group is None:
            return True
        limit = entry.group_limit
        members = self._groups.get(entry.group, [])
        return self._group_running.get(entry.group, 0) < limit and entry in members[:limit]

    def _group_moved(self, group: str) -> None:
        """A member of *group* started or stopped: let the next ones in line go."""
        members = self._groups.get(group, [])
        for member in members[: members[0].group_limit if members else 0]:
            if member.state is EntryState.READY and self._may_start(member):
                self._push_ready(member)

    def _start(self, entry: Entry) -> None:
        entry.state = EntryState.RUNNING
        if entry.group is not None and not entry.counted:
            entry.counted = True
            self._group_running[entry.group] = self._group_running.get(entry.group, 0) + 1

    def _stopped(self, entry: Entry) -> bool:
        """Count *entry* out of its group's running jobs, if it was counted in;
        whether it was running at all.

        Only an entry :meth:`_start` counted in is counted out, once: a job
        that was only filed (cancelled, refused, bad) ran as no member of its
        group, and a count must never go below zero (a weaker group limit).
        """
        if entry.state is not EntryState.RUNNING:
            return False
        if entry.counted:
            entry.counted = False
            assert entry.group is not None
            left = self._group_running.get(entry.group, 0) - 1
            if left > 0:
                self._group_running[entry.group] = left
            else:
                self._group_running.pop(entry.group, None)
        return True

    def _wait(self, entry: Entry, at: float) -> None:
        self._drop_body(entry)
        entry.state = EntryState.WAITING
        entry.wake_at = at
        heapq.heappush(self._timers, (at, next(self._pushes), entry))
        self._notify()
        self._timer_added.fire()

    def read_failed(self, entry: Entry, until: float) -> None:
        """Reading *entry* failed; it is read again at *until*.

        The jobs queued after it wait for its first read (their group's and
        unique key's order depend on it) through :data:`HELD_FAILED_READS`
        failed attempts only: a job that cannot be read must not stall the
        queue. Should it be read later, it takes its place from then on. An
        attempt counts only when other reads came back since its last one:
        while the server is away, every read fails and all keep their order.
        """
        if entry.reads_back_at_failure != self._reads_back:
            entry.failed_reads += 1
        entry.reads_back_at_failure = self._reads_back
        self.wait(entry, until)
        if entry.failed_reads >= HELD_FAILED_READS and not entry.settled_once:
            entry.settled_once = True
            self._known(entry)
            self._drain_unsettled()
            if self._settling:
                self._room.fire()

    def wait(self, entry: Entry, until: datetime | float) -> None:
        """Put *entry* back on a timer (a retry, a reschedule, a skipped claim)."""
        if self._by_id.get(entry.job_id) is entry:
            was_running = self._stopped(entry)
            self._wait(entry, clock_at(until) if isinstance(until, datetime) else until)
            if was_running and entry.group is not None:
                self._group_moved(entry.group)

    # ------------------------------------------------------------ held by type

    def hold(self, entry: Entry) -> None:
        """*entry* was popped but its type may not start now: keep it aside,
        without its body, until :meth:`unhold` lets its type go."""
        if self._by_id.get(entry.job_id) is not entry:
            return
        was_running = self._stopped(entry)
        self._drop_body(entry)
        entry.state = EntryState.HELD
        self._held.setdefault(entry.job_type or "", []).append(entry)
        if was_running and entry.group is not None:
            self._group_moved(entry.group)
        self._notify()

    def unhold(self, may_go: Callable[[str], bool]) -> int:
        """Make held jobs whose type *may_go* ready again; how many."""
        freed = 0
        for job_type in [held for held in self._held if may_go(held)]:
            for entry in self._held.pop(job_type):
                # Stale if it left, or was read again meanwhile (its link touched).
                if entry.state is EntryState.HELD and self._by_id.get(entry.job_id) is entry:
                    self._make_ready(entry, entry.priority)
                    freed += 1
        return freed

    # ------------------------------------------------------------ running

    def has_ready(self) -> bool:
        """Whether a job may start now (stale heap entries are dropped on the way)."""
        while self._ready:
            *_, entry = self._ready[0]
            if (
                entry.state is EntryState.READY
                and self._by_id.get(entry.job_id) is entry
                and self._may_start(entry)
                and self.mine(entry)
            ):
                return True
            # Re-pushed when its group lets it go.
            heapq.heappop(self._ready)
        return False

    def pop(self) -> Entry | None:
        """The ready job to run next, marked running; ``None`` if none may start."""
        if not self.has_ready():
            return None
        *_, entry = heapq.heappop(self._ready)
        self._start(entry)
        return entry

    def pop_urgent(self) -> Entry | None:
        """A job that only needs filing, marked running; ``None`` if there is none."""
        while self._urgent:
            entry = self._urgent.popleft()
            if (
                entry.state is EntryState.READY
                and self._by_id.get(entry.job_id) is entry
                and self.mine(entry)
            ):
                entry.state = EntryState.RUNNING
                return entry
        return None

    def due(self) -> list[Entry]:
        """Waiting jobs whose timer fired; they are to be read again."""
        now = anyio.current_time()
        fired = []
        while self._timers and self._timers[0][0] <= now:
            at, _, entry = heapq.heappop(self._timers)
            if self._timer_live(entry, at):
                fired.append(entry)
        return fired

    @staticmethod
    def _timer_live(entry: Entry, at: float) -> bool:
        """Whether the timer at *at* still stands: the entry waits for it, or
        it is the expiry of an entry still held behind its group."""
        if entry.state is EntryState.WAITING:
            return entry.wake_at == at
        return entry.state is EntryState.READY and entry.expires_at == at

    def next_timer(self) -> float | None:
        """When the earliest timer fires (anyio clock), if any."""
        while self._timers:
            at, _, entry = self._timers[0]
            if self._timer_live(entry, at):
                return at
            heapq.heappop(self._timers)
        return None

    def remove(self, entry: Entry) -> list[Entry]:
        """*entry* left the list (filed, or deleted); returns the jobs merged into it."""
        if self._by_id.get(entry.job_id) is not entry:
            return []
        del self._by_id[entry.job_id]
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        self._drop_body(entry)
        self._stopped(entry)
        if entry.state is EntryState.SETTLING:
            self._settling -= 1
        entry.state = EntryState.READING  # any heap copies are stale now
        if entry.parked_on is not None and entry in entry.parked_on.merged:
            entry.parked_on.merged.remove(entry)
        if entry.unique is not None and self._holders.get(entry.unique) is entry:
            del self._holders[entry.unique]
        if entry in self._catching_up:
            self._catching_up.remove(entry)
        self._known(entry)
        if entry.group is not None:
            members = self._groups.get(entry.group, [])
            if entry in members:
                members.remove(entry)
            if members:
                self._group_moved(entry.group)
            else:
                self._groups.pop(entry.group, None)
        self._drain_unsettled()
        if self._settling:
            # A read waiting for room may now be the one the settling wait for.
            self._room.fire()
        self._notify()
        merged, entry.merged = entry.merged, []
        for member in merged:
            member.parked_on = None
        return merged

    def mark_gone(self, entry: Entry) -> None:
        """*entry*'s link left the list while it runs: forget it when the run ends."""
        entry.gone = True
        self._notify()

    def unpark(self, entries: list[Entry]) -> None:
        """Merged jobs whose holder left without an outcome: to be decided again."""
        for entry in entries:
            if self._by_id.get(entry.job_id) is entry:
                self.reread(entry)

    # ------------------------------------------------------------ bodies

    def _set_body(self, entry: Entry, job: Job[Any] | None) -> None:
        # Kept at least until the job is placed; trimmed then if too many are held.
        self._drop_body(entry)
        if job is not None:
            entry.job = job
            self._bodies += 1

    def take(self, entry: Entry) -> Job[Any] | None:
        """Hand *entry*'s job (if still held) to its runner; frees room for another read."""
        job = entry.job
        self._drop_body(entry)
        return job

    @property
    def full(self) -> bool:
        """Whether ``keep_bodies`` jobs are held (or being read for the first time)."""
        return self._bodies + self._reserved >= self._keep_bodies

    @asynccontextmanager
    async def room(self, entry: Entry) -> AsyncIterator[None]:
        """Wait until the first read of *entry* fits under ``keep_bodies``, and
        hold that room while reading. When jobs read after it wait for it
        (see :meth:`first_unsettled`), it does not wait: they hold the room."""
        while self.full and not (self._settling and self.first_unsettled(entry)):
            await self._room.event.wait()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1
            if entry.job is None:
                self._room.fire()  # not read (or not kept): its room is free again
            self._notify()

    def _drop_body(self, entry: Entry) -> None:
        if entry.job is not None:
            entry.job = None
            self._bodies -= 1
            self._room.fire()
            self._notify()

    def _notify(self) -> None:
        self._changed.fire()

    # ------------------------------------------------------------ introspection

    def check_invariants(self) -> None:
        """Raise :class:`AssertionError` if the bookkeeping is inconsistent (for tests).

        Every group's running count is the number of its members counted in,
        never negative nor kept at zero; every group lists exactly the known
        entries naming it, in queue order; the key and id maps agree.
        """
        counted: dict[str, int] = {}
        grouped: dict[str, list[Entry]] = {}
        for entry in self._by_id.values():
            if entry.counted:
                assert entry.group is not None, entry
                assert entry.state is EntryState.RUNNING, entry
                counted[entry.group] = counted.get(entry.group, 0) + 1
            if entry.group is not None:
                grouped.setdefault(entry.group, []).append(entry)
        assert self._group_running == counted, (self._group_running, counted)
        assert all(count > 0 for count in self._group_running.values())
        assert self._groups == {
            group: sorted(members, key=lambda member: member.seq)
            for group, members in grouped.items()
        }, (self._groups, grouped)
        assert all(self._by_id.get(entry.job_id) is entry for entry in self._by_key.values())
        assert self._settling >= 0
        assert self._bodies >= 0

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (for health checks and tests)."""
        totals = {state.value: 0 for state in EntryState}
        for entry in self._by_id.values():
            totals[entry.state.value] += 1
        return totals
