"""In what order ready jobs start: priority, then queue order.

Among ready jobs, higher ``priority`` first, then the order the jobs were
queued. Jobs that only need filing (bad, finished, cancelled, refused) skip
that order and the slots: they go first, as they come.

Owns :class:`RunOrder`: the ready heap (which may hold stale copies of an
entry, dropped when they come up) and the line of jobs that only need
filing, and the jobs held back by their type (paused, at a concurrency or
rate limit) until the dispatcher's gate lets the type go. Sees jobs only as :class:`~oada_jobs.entry.Entry`; is told which
entries are still runnable and which their group lets start; must not change
an entry's state nor touch the scheduler's other books.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable

import anyio

from .entry import Entry, Signal

__all__ = ["RunOrder"]


class RunOrder:
    """The ready jobs of one queue, in the order they start.

    *runnable* tells whether an entry is still ready, known and this
    replica's; *may_start* whether its group lets it start now; *on_change*
    is called when a job is queued.
    """

    def __init__(
        self,
        runnable: Callable[[Entry], bool],
        may_start: Callable[[Entry], bool],
        on_change: Callable[[], None],
    ) -> None:
        self._runnable = runnable
        self._may_start = may_start
        self._on_change = on_change
        # An entry may be pushed again, so stale copies are skipped on pop
        # and a push counter breaks ties.
        self._ready: list[tuple[float, int, int, Entry]] = []
        self._pushes = itertools.count()
        self._urgent: deque[Entry] = deque()
        self._urgent_added = Signal()
        # Jobs held back by their type, by type.
        self._held: dict[str, list[Entry]] = {}

    @property
    def urgent_added(self) -> anyio.Event:
        """Set when a job that only needs filing is next queued."""
        return self._urgent_added.event

    def push(self, entry: Entry) -> None:
        """Queue *entry* by its priority and queue order."""
        heapq.heappush(self._ready, (-entry.priority, entry.seq, next(self._pushes), entry))
        self._on_change()

    def push_urgent(self, entry: Entry) -> None:
        """Queue *entry*, which only needs filing, ahead of all others."""
        self._urgent.append(entry)
        self._on_change()
        self._urgent_added.fire()

    def has_ready(self) -> bool:
        """Whether a job may start now (stale heap entries are dropped on the way)."""
        while self._ready:
            *_, entry = self._ready[0]
            if self._runnable(entry) and self._may_start(entry):
                return True
            # Re-pushed when its group lets it go.
            heapq.heappop(self._ready)
        return False

    def pop(self) -> Entry | None:
        """The ready job to start next (taken out of the order); ``None`` if none may."""
        if not self.has_ready():
            return None
        *_, entry = heapq.heappop(self._ready)
        return entry

    def pop_urgent(self) -> Entry | None:
        """The next job that only needs filing; ``None`` if there is none."""
        while self._urgent:
            entry = self._urgent.popleft()
            if self._runnable(entry):
                return entry
        return None

    def hold(self, entry: Entry) -> None:
        """Keep *entry* aside: its type may not start now."""
        self._held.setdefault(entry.job_type or "", []).append(entry)

    def unhold(self, may_go: Callable[[str], bool]) -> list[Entry]:
        """The held entries (some may be stale) whose type *may_go*, no longer held."""
        types = [job_type for job_type in self._held if may_go(job_type)]
        return [entry for job_type in types for entry in self._held.pop(job_type)]
