"""Replicas dividing a queue: this replica's share, and catching up on the others.

Across replicas of a service (see :mod:`oada_jobs.replicas`), each job of
the list has an entry in every replica's scheduler, but only the jobs this
replica *owns* (its share, or jobs it stole) are read and run here. A job
of this share that has a group or a unique key also waits until the jobs
queued before it in other replicas' shares have been read here, as context:
its place depends on them.

Owns :class:`Shares`: which entries are this replica's, taking in a share
that moved here or jobs stolen from others, and the wait for context reads.
Sees jobs only as :class:`~oada_jobs.entry.Entry`; is handed whether an
entry is still known, how to have one read and what to do with one whose
wait is over; must not touch the scheduler's other books.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable

from .entry import Entry, EntryState

__all__ = ["Shares"]


class Shares:
    """This replica's share of one queue's jobs, and its jobs waiting for
    earlier jobs of other shares to be read here.

    *owns* tells whether a list key is this replica's share; *known* whether
    an entry is still in the list; *want_read* hands an entry to the queue's
    readers; *resume* places a job whose wait is over.
    """

    def __init__(
        self,
        owns: Callable[[str], bool],
        *,
        known: Callable[[Entry], bool],
        want_read: Callable[[Entry], None],
        resume: Callable[[Entry], None],
    ) -> None:
        self._owns = owns
        self._known = known
        self._want_read = want_read
        self._resume = resume
        self._waiting: list[Entry] = []
        # Jobs of other shares never read here, in queue order (settled or
        # removed ones are dropped lazily): what a grouped job may wait for.
        self._unread: deque[Entry] = deque()

    def mine(self, entry: Entry) -> bool:
        """Whether *entry* is this replica's to read and run (its share, or stolen)."""
        return entry.stolen or self._owns(entry.key)

    def moved_here(self, entries: Iterable[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Of *entries*, after the replicas changed: those now in this share
        that are to be read (made ``READING``), and the ready ones that may
        now run here."""
        to_read, ready = [], []
        for entry in entries:
            if not self.mine(entry):
                continue
            if entry.state is EntryState.ELSEWHERE:
                entry.state = EntryState.READING
                to_read.append(entry)
            elif entry.state is EntryState.READY:
                # Held while it was another share's: may start here now.
                ready.append(entry)
        return to_read, ready

    def steal(self, entries: Iterable[Entry], count: int, seen_before: float) -> list[Entry]:
        """Mark up to *count* of *entries* of other shares first seen before
        *seen_before* (anyio clock) stolen, newest first (the least likely
        to be claimed by their owner already); returns them."""
        candidates = [
            entry
            for entry in entries
            if entry.state in (EntryState.ELSEWHERE, EntryState.READY)
            and entry.seen_at <= seen_before
            and not self.mine(entry)
        ]
        candidates.sort(key=lambda entry: entry.seq, reverse=True)
        taken = candidates[:count]
        for entry in taken:
            entry.stolen = True
        return taken

    def keep_mine(self, merged: list[Entry]) -> list[Entry]:
        """Of jobs merged into one that left, those of this share; the others
        are their owners' to file (read here again only if their share moves here)."""
        mine = []
        for entry in merged:
            if self.mine(entry):
                mine.append(entry)
            elif self._known(entry):
                entry.state = EntryState.ELSEWHERE
        return mine

    def unread(self, entry: Entry) -> None:
        """*entry*, just seen, is another share's: not read here unless needed."""
        self._unread.append(entry)

    def waiting(self) -> bool:
        """Whether a job still waits for earlier ones to be read."""
        return any(waiter.state is EntryState.CATCHING_UP for waiter in self._waiting)

    def catch_up(self, entry: Entry) -> bool:
        """Have the jobs queued before *entry* that were never read here read
        now; ``True`` if *entry* must wait for them (it is ``CATCHING_UP``)."""
        entry.caught_up = True
        unread = self._unread
        while unread and (unread[0].settled_once or not self._known(unread[0])):
            unread.popleft()
        # In queue order: the ones after the first queued after entry came later.
        earlier = itertools.takewhile(lambda other: other.seq < entry.seq, unread)
        missing = [other for other in earlier if not other.settled_once and self._known(other)]
        if not missing:
            return False
        entry.state = EntryState.CATCHING_UP
        entry.missing = {other.job_id for other in missing}
        self._waiting.append(entry)
        for other in missing:
            if other.state is EntryState.ELSEWHERE:
                other.state = EntryState.READING
                self._want_read(other)
        return True

    def known(self, entry: Entry) -> None:
        """*entry* was read (or left): jobs catching up on it may go on."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.missing.discard(entry.job_id)
            if not self._known(waiter):
                continue
            if waiter.missing or waiter.state is not EntryState.CATCHING_UP:
                self._waiting.append(waiter)
                continue
            self._resume(waiter)

    def left(self, entry: Entry) -> None:
        """*entry* left the list: it waits for nothing any more."""
        if entry in self._waiting:
            self._waiting.remove(entry)
