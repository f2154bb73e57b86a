"""The order first reads settle in: strictly queue order.

A group's or a unique key's order must not depend on which read came back
first: the first reads of a queue's jobs are settled in queue order, and a
job that cannot be read holds the ones after it back only so long.

Owns :class:`FirstReads` and the counts behind it (reads settling, reads
that came back, failed reads of one job). Sees jobs only as
:class:`~oada_jobs.entry.Entry`; is handed whether an entry is still known
and what settling one means; must not touch the scheduler's other books.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable

from .entry import Entry, EntryState

__all__ = ["HELD_FAILED_READS", "FirstReads"]

#: Failed first reads of a job that the jobs queued after it wait through.
HELD_FAILED_READS = 3


class FirstReads:
    """First reads of this share's jobs, settled in queue order.

    *known* tells whether an entry is still in the list; *settle* decides a
    job whose first read is settled.
    """

    def __init__(self, known: Callable[[Entry], bool], settle: Callable[[Entry], None]) -> None:
        self._known = known
        self._settle = settle
        # A heap that may hold stale copies (jobs that left, settled or
        # moved to another share); a push counter breaks ties.
        self._unsettled: list[tuple[int, int, Entry]] = []
        self._pushes = itertools.count()
        # Jobs read but waiting for an earlier one's first read to settle:
        # exactly the known entries that are SETTLING (see check()).
        self._settling = 0
        # Reads that came back (a job or a problem), to tell one job that
        # cannot be read from a server that is away.
        self._reads_back = 0

    @property
    def settling(self) -> int:
        """How many jobs were read but wait for an earlier one's first read."""
        return self._settling

    def expect(self, entry: Entry) -> None:
        """*entry*'s first read is to settle in its queue order."""
        heapq.heappush(self._unsettled, (entry.seq, next(self._pushes), entry))

    def came_back(self, entry: Entry) -> None:
        """A read of *entry* came back (a job or a problem)."""
        entry.failed_reads = 0
        self._reads_back += 1

    def arrived(self, entry: Entry) -> None:
        """*entry*'s first read came back: it settles once those before it have.

        Counted once, however often it is read before it settles.
        """
        if entry.state is not EntryState.SETTLING:
            self._settling += 1
        entry.state = EntryState.SETTLING
        # Again, if it came from another share (heap copies of a settled one are skipped).
        self.expect(entry)
        self.drain()

    def failed(self, entry: Entry) -> bool:
        """A read of *entry* failed; whether the jobs after it stop waiting for it.

        They wait through :data:`HELD_FAILED_READS` failed attempts only. An
        attempt counts only when other reads came back since its last one:
        while the server is away, every read fails and all keep their order.
        """
        if entry.reads_back_at_failure != self._reads_back:
            entry.failed_reads += 1
        entry.reads_back_at_failure = self._reads_back
        return entry.failed_reads >= HELD_FAILED_READS and not entry.settled_once

    def leaving(self, entry: Entry) -> None:
        """*entry* is about to leave its state other than by settling (it left
        the list, is read again, or waits on a timer): if it was settling, it
        no longer is. Its first read, if not settled, still holds its place."""
        if entry.state is EntryState.SETTLING:
            self._settling -= 1

    def drain(self) -> None:
        """Settle first reads in queue order, as far as they have come back."""
        while (first := self.head()) is not None:
            if first.state is not EntryState.SETTLING:
                break  # not read yet (or its read failed and is retried)
            heapq.heappop(self._unsettled)
            first.settled_once = True
            self._settling -= 1
            self._settle(first)

    def head(self) -> Entry | None:
        """The first job of this share whose first read has not settled, if any
        (dropping from the heap jobs that left, settled or moved to another share)."""
        while self._unsettled:
            *_, first = self._unsettled[0]
            if (
                self._known(first)
                and not first.settled_once
                and first.state is not EntryState.ELSEWHERE
            ):
                return first
            heapq.heappop(self._unsettled)
        return None

    def check(self, known: Iterable[Entry]) -> None:
        """Raise :class:`AssertionError` unless the count of settling reads is
        that of the *known* entries that are settling."""
        settling = sum(entry.state is EntryState.SETTLING for entry in known)
        assert self._settling == settling, (self._settling, settling)
