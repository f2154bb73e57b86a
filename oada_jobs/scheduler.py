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

Owns :class:`Scheduler`: the moves of a job through its states (seen, read,
settled, started, waiting, held back, gone), each kept in step across the
books it hands to collaborators with invariants of their own:
:class:`~oada_jobs.entry.Entries`, :class:`~oada_jobs.placement.Placement`
(where a settled job goes; unique keys), :class:`~oada_jobs.groups.Groups`,
:class:`~oada_jobs.timers.Timers`, :class:`~oada_jobs.run_order.RunOrder`,
:class:`~oada_jobs.bodies.Bodies`, :class:`~oada_jobs.settling.FirstReads` and
:class:`~oada_jobs.shares.Shares`. :meth:`Scheduler.check_invariants` checks them all.
Sees a job type's defaults only through :class:`Policy` and an outcome only
as data; must not touch the client, the queue, the runner or the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anyio

from .bodies import Bodies
from .entry import URGENT, Entries, Entry, EntryState, Signal, clock_at
from .groups import Groups
from .job import Job
from .placement import Placement, Policy
from .run_order import RunOrder
from .settling import HELD_FAILED_READS, FirstReads
from .shares import Shares
from .timers import Timers
from .types import UniquePolicy

__all__ = [
    "HELD_FAILED_READS",
    "URGENT",
    "Entry",
    "EntryState",
    "Policy",
    "Scheduler",
    "UniquePolicy",
    "clock_at",
]


def _everything(key: str) -> bool:
    return True


def _nowhere(entry: Entry) -> None:
    pass


class Scheduler:
    """The pending jobs of one queue and the order they run in.

    *policy_for* gives the scheduling :class:`Policy` (the registered worker) of a
    job type (its defaults: priority, group limit, unique policy), or
    ``None``. *keep_bodies* bounds how many read jobs are held in memory: the
    queue reads new jobs only while fewer are held. *owns* tells whether a
    list key is this replica's share (everything, by default); *want_read*
    hands an entry of another share to the queue's readers, as context.
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
        self._want_read = want_read if want_read is not None else _nowhere
        self._entries = Entries()
        self._known = self._entries.known
        self._changed = Signal()
        self._timers = Timers()
        self._groups = Groups(push_ready=lambda entry: self._order.push(entry))
        self._order = RunOrder(self._runnable, self._groups.may_start, self._notify)
        self._bodies = Bodies(keep_bodies, self._may_jump, self._notify)
        self._shares = Shares(
            owns if owns is not None else _everything,
            known=self._known,
            want_read=self._want_read,
            resume=self._resume,
        )
        self._placement = Placement(
            policy_for,
            (self._groups, self._timers, self._order),
            worker_id=worker_id,
            mine=self._shares.mine,
            drop_body=self._bodies.drop,
            catch_up=self._shares.catch_up,
            notify=self._notify,
        )
        self._first_reads = FirstReads(self._known, self._placement.settle)
        # Asked of one book alone; documented there.
        self.get = self._entries.get
        self.by_key = self._entries.by_key
        self.counts = self._entries.counts
        self.has_ready = self._order.has_ready
        self.due = self._timers.due
        self.next_timer = self._timers.next
        self.take = self._bodies.take
        self.room = self._bodies.room
        self.mine = self._shares.mine
        self.keep_mine = self._shares.keep_mine

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change (a job became ready, a timer was added, room freed)."""
        return self._changed.event

    @property
    def timer_added(self) -> anyio.Event:
        """Set when a timer is next added; the queue's timer task waits on this
        alone (waking it for every change cost more than the timers)."""
        return self._timers.added

    @property
    def urgent_added(self) -> anyio.Event:
        """Set when a job that only needs filing is next queued."""
        return self._order.urgent_added

    def _notify(self) -> None:
        self._changed.fire()

    @property
    def last_seq(self) -> int:
        """How many jobs the scheduler has been handed so far."""
        return self._entries.seq

    @property
    def held_jobs(self) -> int:
        """How many read jobs are kept in memory."""
        return self._bodies.held

    def entries(self) -> Iterator[Entry]:
        return iter(self._entries.all())

    def add(self, key: str, job_id: str) -> Entry | None:
        """A job seen in the list for the first time; ``None`` if already known.

        It is ``READING`` if it is this replica's to read, else ``ELSEWHERE``.
        """
        entry = self._entries.new(key, job_id)
        if entry is None:
            return None
        if self.mine(entry):
            self._first_reads.expect(entry)
        else:
            entry.state = EntryState.ELSEWHERE
            self._shares.unread(entry)
        return entry

    def reread(self, entry: Entry) -> None:
        """The queue is reading *entry* again (its timer fired, or its link was touched)."""
        self._first_reads.leaving(entry)
        self._bodies.drop(entry)
        self._placement.unpark(entry)
        entry.state = EntryState.READING
        entry.wake_at = None
        entry.expires_at = None

    def read(self, entry: Entry, job: Job[Any] | None, problem: BaseException | None) -> None:
        """The queue read *entry*: its job, or the *problem* that makes it unrunnable."""
        if not self._known(entry):
            return  # left the list while being read
        entry.problem = problem
        self._first_reads.came_back(entry)
        # Kept at least until the job is placed; trimmed then if too many are held.
        self._bodies.keep(entry, job)
        if entry.settled_once or not self.mine(entry):
            # Another share's job, read as context: only its place matters.
            entry.settled_once = True
            self._placement.settle(entry)
            self._shares.known(entry)
            return
        self._first_reads.arrived(entry)
        self._shares.known(entry)
        self._wake_readers()

    def read_failed(self, entry: Entry, until: float) -> None:
        """Reading *entry* failed; it is read again at *until*.

        The jobs queued after it wait for its first read (their group's and
        unique key's order depend on it) through :data:`HELD_FAILED_READS`
        failed attempts only (see :meth:`FirstReads.failed`); should it be
        read later, it takes its place from then on.
        """
        give_up = self._first_reads.failed(entry)
        self.wait(entry, until)
        if give_up:
            entry.settled_once = True
            self._shares.known(entry)
            self._first_reads.drain()
            self._wake_readers()

    def _wake_readers(self) -> None:
        if self._first_reads.settling:
            # Reads wait for an earlier one: that one may go past a full scheduler.
            self._bodies.wake()

    def reading_first(self) -> bool:
        """Whether a job of this share seen in the list still waits for its first
        read to settle, or for the jobs queued before it to be read as context."""
        return self._first_reads.head() is not None or self._shares.waiting()

    def _resume(self, entry: Entry) -> None:
        """*entry* no longer waits for other shares' jobs: place it (read it again
        first if its body was dropped meanwhile)."""
        if entry.job is None:
            self.reread(entry)
            self._want_read(entry)
        else:
            self._placement.place(entry, entry.job)

    def wait(self, entry: Entry, until: datetime | float) -> None:
        """Put *entry* back on a timer (a retry, a reschedule, a skipped claim)."""
        if self._known(entry):
            if entry.state is EntryState.RUNNING:
                self._groups.stopped(entry)
            self._first_reads.leaving(entry)
            self._placement.wait(entry, clock_at(until) if isinstance(until, datetime) else until)

    def reown(self) -> list[Entry]:
        """The replicas changed: jobs now in this share are to be read (returned),
        and read jobs now in it may run; jobs that left it are no longer started."""
        to_read, ready = self._shares.moved_here(self._entries.all())
        for entry in to_read:
            if not entry.settled_once:
                self._first_reads.expect(entry)
        for entry in ready:
            self._placement.make_ready(entry, entry.priority)
        self._notify()
        return to_read

    def steal(self, count: int, seen_before: float) -> list[Entry]:
        """Take up to *count* jobs of other shares first seen before *seen_before*
        (anyio clock) into this one, newest first; returns them, to be read."""
        taken = self._shares.steal(self._entries.all(), count, seen_before)
        for entry in taken:
            self.reread(entry)
            if not entry.settled_once:
                self._first_reads.expect(entry)
        return taken

    def busy(self) -> bool:
        """Whether jobs of this replica's share wait to be read or to start."""
        if self.has_ready():
            return True
        return any(
            entry.state in (EntryState.READING, EntryState.SETTLING, EntryState.CATCHING_UP)
            and self.mine(entry)
            for entry in self._entries.all()
        )

    def hold(self, entry: Entry) -> None:
        """*entry* was popped but its type may not start now: keep it aside,
        without its body, until :meth:`unhold` lets its type go."""
        if not self._known(entry):
            return
        if entry.state is EntryState.RUNNING:
            self._groups.stopped(entry)
        self._bodies.drop(entry)
        entry.state = EntryState.HELD
        self._order.hold(entry)
        self._notify()

    def unhold(self, may_go: Callable[[str], bool]) -> int:
        """Make held jobs whose type *may_go* ready again; how many."""
        freed = 0
        for entry in self._order.unhold(may_go):
            # Stale if it left, or was read again meanwhile (its link touched).
            if entry.state is EntryState.HELD and self._known(entry):
                self._placement.make_ready(entry, entry.priority)
                freed += 1
        return freed

    def _runnable(self, entry: Entry) -> bool:
        return entry.state is EntryState.READY and self._known(entry) and self.mine(entry)

    def pop(self) -> Entry | None:
        """The ready job to run next, marked running; ``None`` if none may start."""
        entry = self._order.pop()
        if entry is not None:
            entry.state = EntryState.RUNNING
            self._groups.count_in(entry)
        return entry

    def pop_urgent(self) -> Entry | None:
        """A job that only needs filing, marked running; ``None`` if there is none."""
        entry = self._order.pop_urgent()
        if entry is not None:
            entry.state = EntryState.RUNNING
        return entry

    def remove(self, entry: Entry) -> list[Entry]:
        """*entry* left the list (filed, or deleted); returns the jobs merged into it."""
        if not self._entries.forget(entry):
            return []
        self._bodies.drop(entry)
        self._groups.count_out(entry)  # only a running entry is counted in
        self._first_reads.leaving(entry)
        entry.state = EntryState.READING  # any heap copies are stale now
        merged = self._placement.left(entry)
        self._shares.left(entry)
        self._shares.known(entry)
        self._groups.leave(entry)
        self._first_reads.drain()
        # A read waiting for room may now be the one the settling wait for.
        self._wake_readers()
        self._notify()
        return merged

    def mark_gone(self, entry: Entry) -> None:
        """*entry*'s link left the list while it runs: forget it when the run ends."""
        entry.gone = True
        self._notify()

    def unpark(self, entries: list[Entry]) -> None:
        """Merged jobs whose holder left without an outcome: to be decided again."""
        for entry in entries:
            if self._known(entry):
                self.reread(entry)

    @property
    def full(self) -> bool:
        """Whether ``keep_bodies`` jobs are held (or being read for the first time)."""
        return self._bodies.full

    def _may_jump(self, entry: Entry) -> bool:
        """Whether the first read of *entry* goes past a full scheduler: the
        jobs read after it wait for it (and hold the room)."""
        return bool(self._first_reads.settling) and self._first_reads.head() is entry

    def check_invariants(self) -> None:
        """Raise :class:`AssertionError` if the bookkeeping is inconsistent (for tests).

        The key and id maps agree; every unique key is held by a known entry
        naming it; the groups (:meth:`Groups.check <oada_jobs.groups.Groups.check>`),
        the first reads and the bodies held agree with the known entries.
        """
        known = self._entries.all()
        self._entries.check()
        self._placement.check(self._known)
        self._groups.check(known)
        self._first_reads.check(known)
        self._bodies.check(known)
