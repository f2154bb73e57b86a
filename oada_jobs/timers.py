"""When waiting jobs are to be read again: the scheduler's timers.

A job whose ``notBefore`` or ``runAt`` lies ahead, that runs on another
worker, or whose read failed waits on a timer, holding no concurrency slot;
so does the expiry of a ready job held behind its group. When a timer fires,
the queue reads the job again.

Owns :class:`Timers`: a heap of (anyio clock time, job) that may hold stale
copies, skipped when they come up. Sees jobs only as
:class:`~oada_jobs.entry.Entry`; must not change an entry's state nor touch
the scheduler's other books.
"""

from __future__ import annotations

import heapq
import itertools

import anyio

from .entry import Entry, EntryState, Signal

__all__ = ["Timers"]


class Timers:
    """The timers of one queue's waiting jobs, by anyio clock time."""

    def __init__(self) -> None:
        # An entry may be pushed again: a timer is live only while the entry
        # still waits for that time; a push counter breaks ties.
        self._heap: list[tuple[float, int, Entry]] = []
        self._pushes = itertools.count()
        self._added = Signal()

    @property
    def added(self) -> anyio.Event:
        """Set when a timer is next added."""
        return self._added.event

    def add(self, entry: Entry, at: float) -> None:
        """A timer for *entry* at *at*: its ``wake_at`` or ``expires_at``, set by the caller."""
        heapq.heappush(self._heap, (at, next(self._pushes), entry))
        self._added.fire()

    def due(self) -> list[Entry]:
        """Entries whose timer fired (popped)."""
        now = anyio.current_time()
        fired = []
        while self._heap and self._heap[0][0] <= now:
            at, _, entry = heapq.heappop(self._heap)
            if _live(entry, at):
                fired.append(entry)
        return fired

    def next(self) -> float | None:
        """When the earliest live timer fires (anyio clock), if any."""
        while self._heap:
            at, _, entry = self._heap[0]
            if _live(entry, at):
                return at
            heapq.heappop(self._heap)
        return None


def _live(entry: Entry, at: float) -> bool:
    """Whether the timer at *at* still stands: the entry waits for it, or
    it is the expiry of an entry still held behind its group."""
    if entry.state is EntryState.WAITING:
        return entry.wake_at == at
    return entry.state is EntryState.READY and entry.expires_at == at
